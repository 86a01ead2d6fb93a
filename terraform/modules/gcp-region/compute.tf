# Instance templates, regional managed instance groups over the pinned zones, autoscaling.
# The image carries the binaries and deploy/systemd units; the startup script only writes this
# region's settings and starts the units. Secrets are fetched at boot by meridian-secrets.service.

locals {
  deploy_env = {
    MERIDIAN_CLOUD            = "gcp"
    MERIDIAN_CLOUD_REGION     = local.gcp
    MERIDIAN_GCP_PROJECT      = var.project
    MERIDIAN_REGION_NAME      = var.region.name
    MERIDIAN_REDIS_HOST       = google_redis_instance.this.host
    MERIDIAN_REDIS_PORT       = tostring(google_redis_instance.this.port)
    MERIDIAN_REDIS_USER       = ""
    MERIDIAN_REDIS_TLS        = "1"
    MERIDIAN_SECRET_TOKEN     = var.secrets.token_secret_id
    MERIDIAN_SECRET_REDIS     = google_secret_manager_secret.redis_auth.id
    MERIDIAN_SECRET_RELAY_TLS = google_secret_manager_secret.relay_tls.id
    MERIDIAN_SECRET_MESH_CA   = var.secrets.mesh_ca_cert_id
  }

  roles = {
    node = {
      machine_type = var.nodes.machine_type
      tag          = local.node_tag
      unit         = "meridian-region-node.service"
      metrics_port = var.nodes.ops_port
    }
    relay = {
      machine_type = var.relays.machine_type
      tag          = local.relay_tag
      unit         = "meridian-interregion-relay.service"
      metrics_port = var.relays.health_port
    }
  }
}

resource "google_compute_region_instance_template" "role" {
  for_each     = local.roles
  project      = var.project
  region       = local.gcp
  name_prefix  = "${local.name}-${each.key}-"
  machine_type = each.value.machine_type
  tags         = [each.value.tag]
  labels       = merge(local.labels, { meridian-role = each.key })

  disk {
    source_image = var.image
    auto_delete  = true
    boot         = true
    disk_size_gb = 20
    disk_type    = "pd-balanced"
    disk_encryption_key {
      kms_key_self_link = google_kms_crypto_key.region.id
    }
  }

  # No access_config: no public address; egress goes through Cloud NAT.
  network_interface {
    subnetwork = google_compute_subnetwork.this.id
  }

  service_account {
    email  = google_service_account.role[each.key].email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  metadata = {
    block-project-ssh-keys = "true"
    enable-oslogin         = "TRUE"
    serial-port-enable     = "false"
    startup-script = templatefile("${path.module}/templates/startup.sh.tftpl", {
      role            = each.key
      unit            = each.value.unit
      deploy_env      = local.deploy_env
      catalogue_files = var.catalogue_files
      region          = var.region
      node_port       = var.nodes.port
      ops_port        = var.nodes.ops_port
      relay_port      = var.region.relay.port
      health          = var.relays.health_port
      metrics_port    = each.value.metrics_port
      redis_ca        = join("\n", [for c in google_redis_instance.this.server_ca_certs : c.cert])
    })
  }

  lifecycle {
    create_before_destroy = true
  }

  depends_on = [google_kms_crypto_key_iam_member.agents]
}

# Traffic health (the load balancer's backend service): /readyz on the ops port, false while
# the node's Redis is away or it drains.
resource "google_compute_health_check" "node" {
  project             = var.project
  name                = "${local.name}-node-ready"
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 2

  http_health_check {
    port         = var.nodes.ops_port
    request_path = "/readyz"
  }

  log_config {
    enable = true
  }
}

# Instance health (autohealing): /healthz on the ops port, which never depends on Redis. With
# /readyz here a Redis outage of ~20 s would make the group replace every node of the region.
resource "google_compute_health_check" "node_live" {
  project             = var.project
  name                = "${local.name}-node-live"
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 3

  http_health_check {
    port         = var.nodes.ops_port
    request_path = "/healthz"
  }

  log_config {
    enable = true
  }
}

resource "google_compute_region_instance_group_manager" "nodes" {
  project                   = var.project
  name                      = "${local.name}-nodes"
  region                    = local.gcp
  base_instance_name        = "${local.name}-node"
  distribution_policy_zones = local.zones

  version {
    instance_template = google_compute_region_instance_template.role["node"].id
  }

  named_port {
    name = "ws"
    port = var.nodes.port
  }

  auto_healing_policies {
    health_check      = google_compute_health_check.node_live.id
    initial_delay_sec = 120
  }

  update_policy {
    type                  = "PROACTIVE"
    minimal_action        = "REPLACE"
    max_surge_fixed       = length(local.zones)
    max_unavailable_fixed = 0
  }
}

resource "google_compute_region_autoscaler" "nodes" {
  project = var.project
  name    = "${local.name}-nodes"
  region  = local.gcp
  target  = google_compute_region_instance_group_manager.nodes.id

  autoscaling_policy {
    min_replicas    = var.nodes.min_size
    max_replicas    = var.nodes.max_size
    cooldown_period = 90

    cpu_utilization {
      target = var.nodes.cpu_target
    }

    # Open WebSockets: the Ops Agent sends the node's meridian_node_connections gauge to
    # Managed Service for Prometheus; the autoscaler sizes the group so each node holds about
    # connections_per_node_target of the region's total.
    metric {
      name                       = "prometheus.googleapis.com/meridian_node_connections/gauge"
      filter                     = "resource.type = \"prometheus_target\" AND metric.labels.region = \"${var.region.name}\""
      single_instance_assignment = var.nodes.connections_per_node_target
    }
  }
}

resource "google_compute_region_health_check" "relay" {
  project             = var.project
  name                = "${local.name}-relay-active"
  region              = local.gcp
  check_interval_sec  = 10
  timeout_sec         = 5
  healthy_threshold   = 2
  unhealthy_threshold = 2

  # Only the active relay (it holds the relay lease in Redis) answers 200.
  http_health_check {
    port         = var.relays.health_port
    request_path = "/readyz"
  }

  log_config {
    enable = true
  }
}

resource "google_compute_region_instance_group_manager" "relays" {
  project                   = var.project
  name                      = "${local.name}-relays"
  region                    = local.gcp
  base_instance_name        = "${local.name}-relay"
  distribution_policy_zones = local.zones
  target_size               = var.relays.count

  version {
    instance_template = google_compute_region_instance_template.role["relay"].id
  }

  # No autohealing on the readiness check: a standby relay is unready by design.
  update_policy {
    type                  = "PROACTIVE"
    minimal_action        = "REPLACE"
    max_surge_fixed       = length(local.zones)
    max_unavailable_fixed = 0
  }
}
