# Dedicated service accounts: each role reads exactly its secrets and writes logs and metrics.
# No SSH keys; OS Login only.
locals {
  role_secrets = {
    node = {
      token = var.secrets.token_secret_id
      redis = google_secret_manager_secret.redis_auth.id
    }
    relay = {
      mesh-ca   = var.secrets.mesh_ca_cert_id
      relay-tls = google_secret_manager_secret.relay_tls.id
      redis     = google_secret_manager_secret.redis_auth.id
    }
  }

  secret_grants = merge([
    for role, secrets in local.role_secrets : {
      for key, id in secrets : "${role}/${key}" => { role = role, secret = id }
    }
  ]...)

  project_roles = {
    for pair in setproduct(keys(local.role_secrets), ["roles/logging.logWriter", "roles/monitoring.metricWriter"]) :
    "${pair[0]}/${pair[1]}" => { role = pair[0], grant = pair[1] }
  }
}

resource "google_service_account" "role" {
  for_each     = local.role_secrets
  project      = var.project
  account_id   = substr("mer-${var.region.name}-${each.key}", 0, 30)
  display_name = "Meridian ${var.region.name} ${each.key}"
}

resource "google_secret_manager_secret_iam_member" "read" {
  for_each  = local.secret_grants
  secret_id = each.value.secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.role[each.value.role].email}"
}

resource "google_project_iam_member" "telemetry" {
  for_each = local.project_roles
  project  = var.project
  role     = each.value.grant
  member   = "serviceAccount:${google_service_account.role[each.value.role].email}"
}
