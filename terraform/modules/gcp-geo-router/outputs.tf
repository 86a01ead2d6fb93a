output "site" {
  description = "Name of the router site."
  value       = var.site.name
}

output "cloud" {
  description = "Always \"gcp\"."
  value       = "gcp"
}

output "address" {
  description = "Static public IPv4 address of the router (the parent zone's glue record)."
  value       = google_compute_address.router.address
}
