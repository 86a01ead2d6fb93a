output "name" {
  description = "Catalogue name of the region."
  value       = var.region.name
}

output "cloud" {
  description = "Always \"gcp\"; lets callers and tests check the module matches the region file."
  value       = "gcp"
}

output "cloud_region" {
  description = "Google Cloud region id the region runs in."
  value       = local.gcp
}

output "ingress_addresses" {
  description = "Public address of the WebSocket load balancer (what the catalogue's ingress.addresses must list)."
  value       = [google_compute_global_address.ingress.address]
}

output "relay_address" {
  description = "Public address of the relay's UDP forwarding rule (the catalogue's relay.address IP)."
  value       = google_compute_address.relay.address
}

output "relay_egress_addresses" {
  description = "Addresses this region's relays dial peers from (Cloud NAT); peers admit these and relay_address on their relay port."
  value       = [for a in google_compute_address.egress : a.address]
}

output "network" {
  description = "Self link of the region's network; relay-mesh-rules adds the peer firewall rule to it."
  value       = google_compute_network.this.self_link
}

output "subnetwork" {
  description = "Self link of the region's subnetwork (geo-router instances are placed here)."
  value       = google_compute_subnetwork.this.self_link
}

output "relay_tag" {
  description = "Network tag of the relay instances (target of the peer firewall rule)."
  value       = local.relay_tag
}

output "kms_key_id" {
  description = "The region's Cloud KMS key."
  value       = google_kms_crypto_key.region.id
}

output "redis_host" {
  description = "Primary endpoint of Memorystore (follows failover)."
  value       = google_redis_instance.this.host
}

output "redis_auth_secret_id" {
  description = "Secret Manager id holding the Memorystore AUTH string (reference only)."
  value       = google_secret_manager_secret.redis_auth.id
}

output "relay_tls_secret_id" {
  description = "Secret Manager id the operator adds this region's relay certificate and key to."
  value       = google_secret_manager_secret.relay_tls.id
}

output "node_instance_group" {
  description = "Instance group of the nodes."
  value       = google_compute_region_instance_group_manager.nodes.instance_group
}
