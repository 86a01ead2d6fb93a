# One Meridian region on Google Cloud, the same shape as modules/aws-region: a VPC subnetwork
# with Cloud NAT on static egress addresses; region-nodes in a regional managed instance group
# over the pinned zones behind a proxy network load balancer (TLS on TCP 443 for WebSocket);
# the relays behind a passthrough network load balancer with a UDP forwarding rule for QUIC;
# Memorystore for Redis Standard tier (replica in another zone, automatic failover), AUTH and
# in-transit encryption on; firewall rules; CPU and connections-per-node autoscaling.
#
# Secrets are referenced, never passed: token secret and mesh CA certificate as Secret Manager
# ids. Memorystore generates the AUTH string; it is copied into Secret Manager through a
# write-only argument (see redis.tf for what the state still holds).

locals {
  name   = "meridian-${var.region.name}"
  gcp    = var.region.cloud_region
  zones  = [for s in var.zone_suffixes : "${local.gcp}-${s}"]
  labels = merge(var.labels, { meridian-region = var.region.name, meridian-cloud = "gcp" })

  # Google's load balancer and health check source ranges.
  google_lb_ranges     = ["35.191.0.0/16", "130.211.0.0/22"]
  google_health_ranges = ["35.191.0.0/16", "130.211.0.0/22", "209.85.152.0/22", "209.85.204.0/22"]

  node_tag  = "${local.name}-node"
  relay_tag = "${local.name}-relay"
}

data "google_project" "this" {
  project_id = var.project
}
