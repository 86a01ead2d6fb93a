# One geo-router instance on AWS: authoritative DNS for the mesh zone (UDP and TCP 53) and the
# HTTP router, on a static address that the parent zone's glue records point at. Run several
# (modules are instantiated per site, on more than one cloud) so the zone survives a site loss.

locals {
  name = "meridian-router-${var.site.name}"
  aws  = var.site.cloud_region
  tags = merge(var.tags, { "meridian:role" = "geo-router", "meridian:site" = var.site.name })
}

data "aws_partition" "current" {}

data "aws_ami" "meridian" {
  region      = local.aws
  most_recent = true
  owners      = [var.image.owner]

  filter {
    name   = "name"
    values = [var.image.name_pattern]
  }
}

resource "aws_security_group" "router" {
  region      = local.aws
  name        = local.name
  description = "Meridian geo-router ${var.site.name}: DNS and the HTTP route API from anywhere"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "router" {
  for_each = {
    dns-udp = { protocol = "udp", port = 53 }
    dns-tcp = { protocol = "tcp", port = 53 }
    http    = { protocol = "tcp", port = var.http_port }
  }
  region            = local.aws
  security_group_id = aws_security_group.router.id
  description       = "Resolvers and clients: ${each.key}"
  ip_protocol       = each.value.protocol
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = "0.0.0.0/0"
}

# The admin API: TLS, and only from the operators' ranges (none by default).
resource "aws_vpc_security_group_ingress_rule" "admin" {
  for_each          = toset(var.admin_cidrs)
  region            = local.aws
  security_group_id = aws_security_group.router.id
  description       = "Operators: the admin API (TLS)"
  ip_protocol       = "tcp"
  from_port         = var.admin_port
  to_port           = var.admin_port
  cidr_ipv4         = length(regexall(":", each.value)) > 0 ? null : each.value
  cidr_ipv6         = length(regexall(":", each.value)) > 0 ? each.value : null
}

resource "aws_vpc_security_group_egress_rule" "controls" {
  count             = var.controls == null ? 0 : 1
  region            = local.aws
  security_group_id = aws_security_group.router.id
  description       = "The shared routing-control store (Redis over TLS)"
  ip_protocol       = "tcp"
  from_port         = var.controls.port
  to_port           = var.controls.port
  cidr_ipv4         = "${var.controls.address}/32"
}

resource "aws_vpc_security_group_egress_rule" "https" {
  region            = local.aws
  security_group_id = aws_security_group.router.id
  description       = "Region health checks (health_url) and AWS APIs over HTTPS"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "router" {
  name               = local.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "router" {
  for_each   = toset(["AmazonSSMManagedInstanceCore", "CloudWatchAgentServerPolicy"])
  role       = aws_iam_role.router.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/${each.key}"
}

# The router reads exactly its secrets: the admin tokens and mesh CA certificate (replicas in its
# own region, under the region key) and the control store's AUTH password (in the store's region,
# under the store's key).
data "aws_iam_policy_document" "read_secrets" {
  statement {
    sid       = "ReadOwnSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = compact([var.secrets.router_admin_tokens_arn, var.secrets.mesh_ca_cert_arn, try(var.controls.auth_secret_arn, "")])
  }

  statement {
    sid       = "DecryptSecrets"
    actions   = ["kms:Decrypt"]
    resources = compact([var.kms_key_arn, try(var.controls.kms_key_arn, "")])
  }
}

resource "aws_iam_role_policy" "read_secrets" {
  name   = "read-secrets"
  role   = aws_iam_role.router.id
  policy = data.aws_iam_policy_document.read_secrets.json
}

resource "aws_iam_instance_profile" "router" {
  name = local.name
  role = aws_iam_role.router.name
  tags = local.tags
}

resource "aws_instance" "router" {
  region                 = local.aws
  ami                    = data.aws_ami.meridian.id
  instance_type          = var.instance_type
  subnet_id              = var.subnet_id
  vpc_security_group_ids = [aws_security_group.router.id]
  iam_instance_profile   = aws_iam_instance_profile.router.name
  ebs_optimized          = true
  monitoring             = true
  tags                   = merge(local.tags, { Name = local.name })

  user_data = templatefile("${path.module}/templates/user-data.sh.tftpl", {
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
        MERIDIAN_CLOUD               = "aws"
        MERIDIAN_CLOUD_REGION        = local.aws
        MERIDIAN_ROLE                = "router"
        MERIDIAN_SECRET_ADMIN_TOKENS = var.secrets.router_admin_tokens_arn
        MERIDIAN_SECRET_MESH_CA      = var.secrets.mesh_ca_cert_arn
      },
      var.controls == null ? {} : {
        MERIDIAN_SECRET_CONTROLS = var.controls.auth_secret_arn
        MERIDIAN_CONTROLS_HOST   = var.controls.tls_name
        MERIDIAN_CONTROLS_PORT   = tostring(var.controls.port)
        MERIDIAN_CONTROLS_USER   = var.controls.user
      },
    )
  })

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    encrypted   = true
    kms_key_id  = var.kms_key_arn
    volume_type = "gp3"
    volume_size = 20
  }
}

# The router's address: the glue record in the parent zone points here.
resource "aws_eip" "router" {
  region   = local.aws
  domain   = "vpc"
  instance = aws_instance.router.id
  tags     = merge(local.tags, { Name = local.name })
}
