# The routing-control store shared by every geo-router (docs/geo-router.md, "Reaching every router
# within 1 s"): one small Redis on a VM in one designated AWS site, on a static public address,
# TLS only (certificate issued by the mesh CA), AUTH as ACL user "meridian-router" whose password
# terraform generates as an ephemeral value and writes, write-only, to Secrets Manager and (for the
# gcp routers) Secret Manager. Its security group admits the Redis port from the routers' own
# addresses only.
#
# Why not ElastiCache or Memorystore: neither has an endpoint outside its VPC, and the routers run
# in several VPCs on two clouds; reaching a managed Redis would take cross-region peering plus a
# cross-cloud VPN for a few hundred bytes per second. The price is a single instance without
# automatic failover; while it is unreachable every router keeps routing on the last controls it
# saw and admin calls fail with 503 (terraform/README.md, "Routing controls").

locals {
  name        = "meridian-router-controls"
  aws         = var.site.cloud_region
  user        = "meridian-router"
  gcp_enabled = var.gcp_project != null && length(var.gcp_locations) > 0
  tags        = merge(var.tags, { "meridian:role" = "router-controls", "meridian:site" = var.site.name })
}

data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}

data "aws_ami" "meridian" {
  region      = local.aws
  most_recent = true
  owners      = [var.image.owner]

  filter {
    name   = "name"
    values = [var.image.name_pattern]
  }
}

# ---------------------------------------------------------------- key

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111: a key policy's Resource "*" is this key alone; statements are scoped by principal.
  #checkov:skip=CKV_AWS_356: a key policy's Resource "*" is this key alone; statements are scoped by principal.
  #checkov:skip=CKV_AWS_109: the account-root statement is AWS's required default key policy; without it the key is unmanageable.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "controls" {
  region                  = local.aws
  description             = "Meridian router control store: its secrets and volume"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "controls" {
  region        = local.aws
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.controls.key_id
}

# ---------------------------------------------------------------- secrets

ephemeral "aws_secretsmanager_random_password" "auth" {
  region              = local.aws
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "auth" {
  #checkov:skip=CKV2_AWS_57: rotated by bumping auth_version, which writes both clouds' copies in one apply; a rotation Lambda could not update the gcp copy and the server together.
  region                  = local.aws
  name                    = "meridian/router-controls-auth"
  description             = "AUTH password of the Redis user ${local.user} on the router control store (written by terraform as a write-only value)"
  kms_key_id              = aws_kms_key.controls.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "auth" {
  region                   = local.aws
  secret_id                = aws_secretsmanager_secret.auth.id
  secret_string_wo         = ephemeral.aws_secretsmanager_random_password.auth.random_password
  secret_string_wo_version = var.auth_version
}

resource "google_secret_manager_secret" "auth" {
  count     = local.gcp_enabled ? 1 : 0
  project   = var.gcp_project
  secret_id = "meridian-router-controls-auth"
  labels    = { for k, v in local.tags : lower(replace(k, ":", "-")) => lower(v) }

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

resource "google_secret_manager_secret_version" "auth" {
  count                  = local.gcp_enabled ? 1 : 0
  secret                 = google_secret_manager_secret.auth[0].id
  secret_data_wo         = ephemeral.aws_secretsmanager_random_password.auth.random_password
  secret_data_wo_version = var.auth_version
}

# The store's certificate and key, issued offline by the mesh CA for tls_name; an operator puts
# the version (terraform/README.md, "Secrets").
resource "aws_secretsmanager_secret" "tls" {
  #checkov:skip=CKV2_AWS_57: issued offline by the mesh CA, whose key is in no cloud; re-issue is the documented rotation.
  region                  = local.aws
  name                    = "meridian/router-controls-tls"
  description             = "Certificate and key of the router control store (JSON {\"cert\": PEM, \"key\": PEM}, issued by the mesh CA for ${var.tls_name})"
  kms_key_id              = aws_kms_key.controls.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

# ---------------------------------------------------------------- network

resource "aws_security_group" "controls" {
  region      = local.aws
  name        = local.name
  description = "Meridian router control store: Redis over TLS from the geo-routers only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "routers" {
  for_each          = var.router_addresses
  region            = local.aws
  security_group_id = aws_security_group.controls.id
  description       = "Redis over TLS from geo-router ${each.key}"
  ip_protocol       = "tcp"
  from_port         = var.port
  to_port           = var.port
  cidr_ipv4         = "${each.value}/32"
}

resource "aws_vpc_security_group_egress_rule" "https" {
  region            = local.aws
  security_group_id = aws_security_group.controls.id
  description       = "Secrets Manager, SSM and CloudWatch APIs over HTTPS"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# Allocated apart from the instance, so replacing the instance keeps the address the routers use.
resource "aws_eip" "controls" {
  region = local.aws
  domain = "vpc"
  tags   = merge(local.tags, { Name = local.name })
}

resource "aws_eip_association" "controls" {
  region        = local.aws
  allocation_id = aws_eip.controls.id
  instance_id   = aws_instance.controls.id
}

# ---------------------------------------------------------------- instance

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "read_secrets" {
  statement {
    sid       = "ReadOwnSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [aws_secretsmanager_secret.auth.arn, aws_secretsmanager_secret.tls.arn]
  }

  statement {
    sid       = "DecryptWithStoreKey"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.controls.arn]
  }
}

resource "aws_iam_role" "controls" {
  name               = local.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "read_secrets" {
  name   = "read-secrets"
  role   = aws_iam_role.controls.id
  policy = data.aws_iam_policy_document.read_secrets.json
}

resource "aws_iam_role_policy_attachment" "managed" {
  for_each   = toset(["AmazonSSMManagedInstanceCore", "CloudWatchAgentServerPolicy"])
  role       = aws_iam_role.controls.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.key}"
}

resource "aws_iam_instance_profile" "controls" {
  name = local.name
  role = aws_iam_role.controls.name
  tags = local.tags
}

resource "aws_instance" "controls" {
  region                 = local.aws
  ami                    = data.aws_ami.meridian.id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.controls.id]
  iam_instance_profile   = aws_iam_instance_profile.controls.name
  ebs_optimized          = true
  monitoring             = true
  tags                   = merge(local.tags, { Name = local.name })

  user_data = templatefile("${path.module}/templates/user-data.sh.tftpl", {
    deploy_env = {
      MERIDIAN_CLOUD               = "aws"
      MERIDIAN_CLOUD_REGION        = local.aws
      MERIDIAN_ROLE                = "router-controls"
      MERIDIAN_CONTROLS_USER       = local.user
      MERIDIAN_SECRET_CONTROLS     = aws_secretsmanager_secret.auth.arn
      MERIDIAN_SECRET_CONTROLS_TLS = aws_secretsmanager_secret.tls.arn
    }
    port = var.port
  })

  # Restarted on another host when its host fails (the store is a single instance).
  maintenance_options {
    auto_recovery = "default"
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    kms_key_id  = aws_kms_key.controls.arn
    volume_type = "gp3"
    volume_size = var.volume_size_gb
  }

  lifecycle {
    precondition {
      condition     = length(var.router_addresses) > 0
      error_message = "The router control store needs at least one geo-router to serve."
    }
  }
}
