# WebSocket ingress: a global external proxy network load balancer with a target SSL proxy
# (TLS ends at Google's edge with the Certificate Manager map; the nodes speak plain TCP behind
# it). The address is the region's own: the geo-router hands it out only for this region, and
# the backend service has only this region's instance group.
resource "google_compute_global_address" "ingress" {
  project      = var.project
  name         = "${local.name}-ingress"
  address_type = "EXTERNAL"
  address      = var.byoip ? var.region.ingress.addresses[0] : null
  labels       = merge(local.labels, { meridian-role = "ingress" })
}

resource "google_compute_ssl_policy" "modern" {
  project         = var.project
  name            = "${local.name}-tls"
  profile         = "RESTRICTED"
  min_tls_version = "TLS_1_2"
}

resource "google_compute_backend_service" "nodes" {
  project               = var.project
  name                  = "${local.name}-nodes"
  protocol              = "TCP"
  port_name             = "ws"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  # WebSockets ping every 10 s; an idle limit of an hour leaves long sessions alone.
  timeout_sec                     = 3600
  connection_draining_timeout_sec = var.nodes.drain_seconds
  health_checks                   = [google_compute_health_check.node.id]

  backend {
    group           = google_compute_region_instance_group_manager.nodes.instance_group
    balancing_mode  = "UTILIZATION"
    max_utilization = 0.8
  }

  log_config {
    enable      = true
    sample_rate = 1.0
  }
}

resource "google_compute_target_ssl_proxy" "websocket" {
  project         = var.project
  name            = "${local.name}-wss"
  backend_service = google_compute_backend_service.nodes.id
  certificate_map = var.certificate_map
  ssl_policy      = google_compute_ssl_policy.modern.id
}

resource "google_compute_global_forwarding_rule" "websocket" {
  project               = var.project
  name                  = "${local.name}-wss"
  ip_protocol           = "TCP"
  port_range            = "443"
  ip_address            = google_compute_global_address.ingress.id
  target                = google_compute_target_ssl_proxy.websocket.id
  load_balancing_scheme = "EXTERNAL_MANAGED"
  labels                = local.labels
}

# Relay: an external passthrough network load balancer with a UDP forwarding rule on the
# catalogue's relay port. Passthrough keeps the peer's address, so the firewall can admit only
# the other regions' relay addresses.
resource "google_compute_address" "relay" {
  project      = var.project
  name         = "${local.name}-relay"
  region       = local.gcp
  address_type = "EXTERNAL"
  address      = var.byoip ? var.region.relay.ip : null
  labels       = merge(local.labels, { meridian-role = "relay" })
}

resource "google_compute_region_backend_service" "relays" {
  project               = var.project
  name                  = "${local.name}-relays"
  region                = local.gcp
  protocol              = "UDP"
  load_balancing_scheme = "EXTERNAL"
  health_checks         = [google_compute_region_health_check.relay.id]

  backend {
    group          = google_compute_region_instance_group_manager.relays.instance_group
    balancing_mode = "CONNECTION"
  }

  log_config {
    enable      = true
    sample_rate = 1.0
  }
}

resource "google_compute_forwarding_rule" "quic" {
  project               = var.project
  name                  = "${local.name}-quic"
  region                = local.gcp
  ip_protocol           = "UDP"
  ports                 = [tostring(var.region.relay.port)]
  ip_address            = google_compute_address.relay.address
  backend_service       = google_compute_region_backend_service.relays.id
  load_balancing_scheme = "EXTERNAL"
  labels                = local.labels
}
