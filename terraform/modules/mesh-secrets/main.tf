# Secrets shared by every region, created empty: the connection-token secret (HS256 key every
# node verifies tokens with), the mesh CA certificate (relays verify peers with it; routers verify
# the routing-control store with it) and the geo-routers' admin tokens. Their
# values are added out of band by an operator (terraform/README.md, "Secrets"), so they are never
# in the repo, a variable or the state. The mesh CA's private key is in neither cloud: it signs
# relay certificates offline.
#
# AWS: one secret in the home region (the first AWS catalogue region by name), replicated to the
# other AWS regions under each region's key. Google Cloud: one secret replicated to every gcp
# region.

locals {
  aws_names  = sort(keys(var.aws_regions))
  aws_home   = length(local.aws_names) > 0 ? var.aws_regions[local.aws_names[0]] : null
  aws_others = { for name in slice(local.aws_names, min(1, length(local.aws_names)), length(local.aws_names)) : name => var.aws_regions[name] if var.aws_regions[name].cloud_region != local.aws_home.cloud_region }
  # Several catalogue regions may share an AWS region; replicate once per AWS region.
  aws_replicas = { for name, r in local.aws_others : r.cloud_region => r.kms_key_arn... }

  shared = {
    token-secret = "HS256 key for Meridian connection tokens, shared by every region"
    mesh-ca-cert = "PEM certificate of the Meridian mesh CA (relays verify peers with it)"
    # JSON [{"actor": "sre-oncall", "token": "<48 random bytes, base64>"}, ...]
    router-admin-tokens = "Bearer tokens of the geo-router admin API (routing controls), with the actor each is audited as"
  }

  gcp_enabled = var.gcp_project != null && length(var.gcp_locations) > 0
}

resource "aws_secretsmanager_secret" "shared" {
  #checkov:skip=CKV2_AWS_57: values are put by an operator (token secret, mesh CA certificate, admin tokens); rotation is the documented re-issue procedure, a rotation Lambda would need the offline CA key.
  for_each                = local.aws_home == null ? {} : local.shared
  region                  = local.aws_home.cloud_region
  name                    = "meridian/${each.key}"
  description             = each.value
  kms_key_id              = local.aws_home.kms_key_arn
  recovery_window_in_days = 7
  tags                    = var.tags

  dynamic "replica" {
    for_each = local.aws_replicas
    content {
      region     = replica.key
      kms_key_id = replica.value[0]
    }
  }
}

resource "google_secret_manager_secret" "shared" {
  for_each  = local.gcp_enabled ? local.shared : {}
  project   = var.gcp_project
  secret_id = "meridian-${each.key}"
  labels    = { for k, v in var.tags : lower(replace(k, ":", "-")) => lower(v) }

  replication {
    user_managed {
      dynamic "replicas" {
        for_each = toset(var.gcp_locations)
        content {
          location = replicas.key
        }
      }
    }
  }
}
