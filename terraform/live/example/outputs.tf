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

output "router_controls" {
  description = "The routing-control store the geo-routers share: site, address, port, certificate name (issue its certificate with the mesh CA for this name), and the secret its certificate goes into."
  value = local.controls_on ? {
    site           = local.controls_site
    address        = module.router_controls[0].address
    port           = module.router_controls[0].port
    tls_name       = module.router_controls[0].tls_name
    tls_secret_arn = module.router_controls[0].tls_secret_arn
  } : null
}
