# One Meridian region on AWS: a VPC over the pinned availability zones, region-nodes in an
# autoscaling group behind a network load balancer (TLS on TCP 443 for WebSocket), the relays
# behind a UDP listener for QUIC, and ElastiCache Redis with a replica in another zone and
# automatic failover. Every resource sets `region` (AWS provider 6 enhanced region support), so
# one provider configuration serves every catalogue region and the root can for_each over them.
#
# Secrets are referenced, never passed: the token secret and the mesh CA certificate come in as
# Secrets Manager ARNs; the Redis password is generated here as an ephemeral value and written
# only to write-only arguments, so it is in neither the repo, a variable nor the state.

locals {
  name   = "meridian-${var.region.name}"
  aws    = var.region.cloud_region
  zones  = sort(data.aws_availability_zones.pinned.names)
  zone_i = { for i, zone in local.zones : zone => i }

  # /20 per zone: public subnets from the first half of the VPC, private from the second.
  public_subnets  = { for zone, i in local.zone_i : zone => cidrsubnet(var.vpc_cidr, 4, i) }
  private_subnets = { for zone, i in local.zone_i : zone => cidrsubnet(var.vpc_cidr, 4, i + 8) }

  byoip = var.byoip_pool_id != null
  # One ingress address per zone; with BYOIP the catalogue's addresses are used in order.
  ingress_zones = local.byoip ? slice(local.zones, 0, min(length(var.region.ingress.addresses), length(local.zones))) : local.zones

  tags = merge(var.tags, {
    "meridian:region" = var.region.name
    "meridian:cloud"  = "aws"
  })
}

# Fails the plan if a pinned zone does not exist or is unavailable in the account.
data "aws_availability_zones" "pinned" {
  region = local.aws
  state  = "available"

  filter {
    name   = "zone-name"
    values = [for s in var.availability_zone_suffixes : "${var.region.cloud_region}${s}"]
  }

  lifecycle {
    postcondition {
      condition     = length(self.names) == length(var.availability_zone_suffixes)
      error_message = "Some of the pinned zones ${join(", ", var.availability_zone_suffixes)} of ${var.region.cloud_region} are not available."
    }
  }
}

data "aws_caller_identity" "current" {}

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

data "aws_acm_certificate" "websocket" {
  region      = local.aws
  domain      = var.tls_certificate_domain
  statuses    = ["ISSUED"]
  most_recent = true
}
