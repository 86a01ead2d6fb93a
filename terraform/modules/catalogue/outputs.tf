output "regions" {
  description = "Every catalogue region, keyed by name (the export's schema, see terraform/README.md)."
  value       = local.regions
}

output "by_cloud" {
  description = "Catalogue regions partitioned by cloud: { aws = { name => region }, gcp = { ... } }. The root configuration's for_each over each cloud's region module uses exactly these maps."
  value       = local.by_cloud

  precondition {
    condition     = var.allow_undeployable || length(local.undeployable) == 0
    error_message = "Regions with a cloud terraform cannot deploy: ${join(", ", local.undeployable)}."
  }
}

output "relay_endpoints" {
  description = "Relay endpoint IP of every region, keyed by region name."
  value       = local.relay_endpoints
}
