# A regional key encrypts the instances' disks, Memorystore and the region's secrets.
resource "google_kms_key_ring" "region" {
  project  = var.project
  name     = local.name
  location = local.gcp
}

resource "google_kms_crypto_key" "region" {
  name            = "${local.name}-data"
  key_ring        = google_kms_key_ring.region.id
  rotation_period = "7776000s"
  labels          = local.labels

  # Key rings cannot be deleted in Google Cloud; retiring a region removes the key from state
  # and schedules its versions for destruction by hand (terraform/README.md).
  lifecycle {
    prevent_destroy = true
  }
}

locals {
  # Google-managed service agents that encrypt on our behalf.
  kms_users = {
    compute = "serviceAccount:service-${data.google_project.this.number}@compute-system.iam.gserviceaccount.com"
    redis   = "serviceAccount:service-${data.google_project.this.number}@cloud-redis.iam.gserviceaccount.com"
    secrets = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-secretmanager.iam.gserviceaccount.com"
  }
}

resource "google_kms_crypto_key_iam_member" "agents" {
  for_each      = local.kms_users
  crypto_key_id = google_kms_crypto_key.region.id
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value
}
