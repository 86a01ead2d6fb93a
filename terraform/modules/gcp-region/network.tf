resource "google_compute_network" "this" {
  project                 = var.project
  name                    = local.name
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"
}

resource "google_compute_subnetwork" "this" {
  project                  = var.project
  name                     = local.name
  region                   = local.gcp
  network                  = google_compute_network.this.id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true

  log_config {
    aggregation_interval = "INTERVAL_5_SEC"
    flow_sampling        = 0.5
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Static egress addresses: a relay dialing a peer region arrives from one of these, so peers
# admit them on their relay port (relay-mesh-rules module).
resource "google_compute_address" "egress" {
  for_each     = toset(var.zone_suffixes)
  project      = var.project
  name         = "${local.name}-egress-${each.key}"
  region       = local.gcp
  address_type = "EXTERNAL"
  labels       = merge(local.labels, { meridian-role = "relay-egress" })
}

resource "google_compute_router" "this" {
  project = var.project
  name    = local.name
  region  = local.gcp
  network = google_compute_network.this.id
}

resource "google_compute_router_nat" "this" {
  project                            = var.project
  name                               = local.name
  router                             = google_compute_router.this.name
  region                             = local.gcp
  nat_ip_allocate_option             = "MANUAL_ONLY"
  nat_ips                            = [for a in google_compute_address.egress : a.self_link]
  source_subnetwork_ip_ranges_to_nat = "ALL_SUBNETWORKS_ALL_IP_RANGES"

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# Firewall. Ingress is denied by default in a custom network; these rules open exactly the
# paths the region uses. The relay port's peer rule is made by relay-mesh-rules.
resource "google_compute_firewall" "nodes_from_lb" {
  project     = var.project
  name        = "${local.name}-nodes-from-lb"
  network     = google_compute_network.this.id
  description = "WebSocket traffic from Google's load balancer proxies, and their /readyz and /healthz checks on the ops port"
  direction   = "INGRESS"
  priority    = 1000

  source_ranges = local.google_lb_ranges
  target_tags   = [local.node_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.nodes.port), tostring(var.nodes.ops_port)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

resource "google_compute_firewall" "relays_health" {
  project     = var.project
  name        = "${local.name}-relays-health"
  network     = google_compute_network.this.id
  description = "Relay readiness checks from Google's health checkers (only the active relay is ready)"
  direction   = "INGRESS"
  priority    = 1000

  source_ranges = local.google_health_ranges
  target_tags   = [local.relay_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.relays.health_port)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
