# One geo-router instance on Google Cloud: authoritative DNS for the mesh zone (UDP and TCP 53)
# and the HTTP router, on a static external address the parent zone's glue records point at.

locals {
  name   = "meridian-router-${var.site.name}"
  zone   = "${var.site.cloud_region}-${var.site.zone_suffix}"
  tag    = "meridian-router"
  labels = merge(var.labels, { meridian-role = "geo-router", meridian-site = var.site.name })
}

resource "google_compute_address" "router" {
  project      = var.project
  name         = local.name
  region       = var.site.cloud_region
  address_type = "EXTERNAL"
  labels       = local.labels
}

resource "google_service_account" "router" {
  project      = var.project
  account_id   = substr("mer-router-${var.site.name}", 0, 30)
  display_name = "Meridian geo-router ${var.site.name}"
}

resource "google_project_iam_member" "router" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter"])
  project  = var.project
  role     = each.key
  member   = "serviceAccount:${google_service_account.router.email}"
}

# The router reads exactly its secrets.
resource "google_secret_manager_secret_iam_member" "read" {
  for_each = merge(
    {
      admin-tokens = var.secrets.router_admin_tokens_id
      mesh-ca-cert = var.secrets.mesh_ca_cert_id
    },
    var.controls == null ? {} : { controls-auth = var.controls.auth_secret_id },
  )
  secret_id = each.value
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.router.email}"
}

resource "google_compute_instance" "router" {
  #checkov:skip=CKV_GCP_40: an authoritative DNS server must be reachable at the fixed address of its glue record; only ports 53 and the HTTP API are open.
  project      = var.project
  name         = local.name
  zone         = local.zone
  machine_type = var.machine_type
  tags         = [local.tag]
  labels       = local.labels

  boot_disk {
    kms_key_self_link = var.kms_key_id
    initialize_params {
      image = var.image
      size  = 20
      type  = "pd-balanced"
    }
  }

  network_interface {
    subnetwork = var.subnetwork
    access_config {
      nat_ip = google_compute_address.router.address
    }
  }

  service_account {
    email  = google_service_account.router.email
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
      site         = var.site.name
      zone_name    = var.zone_name
      http_port    = var.http_port
      admin_port   = var.admin_port
      files        = var.catalogue_files
      name_servers = var.name_servers
      controls     = var.controls
      # References only; meridian-secrets reads the values into /run/meridian at boot.
      deploy_env = merge(
        {
          MERIDIAN_CLOUD               = "gcp"
          MERIDIAN_CLOUD_REGION        = var.site.cloud_region
          MERIDIAN_GCP_PROJECT         = var.project
          MERIDIAN_ROLE                = "router"
          MERIDIAN_SECRET_ADMIN_TOKENS = var.secrets.router_admin_tokens_id
          MERIDIAN_SECRET_MESH_CA      = var.secrets.mesh_ca_cert_id
        },
        var.controls == null ? {} : {
          MERIDIAN_SECRET_CONTROLS = var.controls.auth_secret_id
          MERIDIAN_CONTROLS_HOST   = var.controls.tls_name
          MERIDIAN_CONTROLS_PORT   = tostring(var.controls.port)
          MERIDIAN_CONTROLS_USER   = var.controls.user
        },
      )
    })
  }
}

resource "google_compute_firewall" "router" {
  project     = var.project
  name        = "${local.name}-public"
  network     = var.network
  description = "DNS and the HTTP route API of the geo-router, from anywhere"
  direction   = "INGRESS"

  source_ranges = ["0.0.0.0/0"]
  target_tags   = [local.tag]

  allow {
    protocol = "udp"
    ports    = ["53"]
  }

  allow {
    protocol = "tcp"
    ports    = ["53", tostring(var.http_port)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# The admin API: TLS, and only from the operators' ranges (none by default).
resource "google_compute_firewall" "admin" {
  count       = length(var.admin_cidrs) > 0 ? 1 : 0
  project     = var.project
  name        = "${local.name}-admin"
  network     = var.network
  description = "The geo-router's admin API (TLS), from the operators' ranges only"
  direction   = "INGRESS"

  source_ranges = var.admin_cidrs
  target_tags   = [local.tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.admin_port)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
