output "regions" {
  description = "Each deployed region: its cloud, cloud region and the module instance that deploys it."
  value = merge(
    { for name, m in module.aws_region : name => { cloud = m.cloud, cloud_region = m.cloud_region, module = "module.aws_region[\"${name}\"]" } },
    { for name, m in module.gcp_region : name => { cloud = m.cloud, cloud_region = m.cloud_region, module = "module.gcp_region[\"${name}\"]" } },
  )
}

output "deployed_addresses" {
  description = "Ingress and relay addresses as deployed, per region (what the region files must list)."
  value = merge(
    { for name, m in module.aws_region : name => { ingress = m.ingress_addresses, relay = m.relay_address, relay_egress = m.relay_egress_addresses } },
    { for name, m in module.gcp_region : name => { ingress = m.ingress_addresses, relay = m.relay_address, relay_egress = m.relay_egress_addresses } },
  )
}

output "name_servers" {
  description = "The mesh zone's delegated name servers and their glue addresses."
  value       = module.dns_delegation.glue
}
