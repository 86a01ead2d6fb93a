# Static addresses: the catalogue's own (BYOIP) or allocated by Amazon.
resource "aws_eip" "ingress" {
  #checkov:skip=CKV2_AWS_19: attached to the ingress NLB through subnet_mapping, the only way an NLB gets a static address.
  for_each         = { for i, zone in local.ingress_zones : zone => i }
  region           = local.aws
  domain           = "vpc"
  public_ipv4_pool = var.byoip_pool_id
  address          = local.byoip ? var.region.ingress.addresses[each.value] : null
  tags             = merge(local.tags, { Name = "${local.name}-ingress-${each.key}", "meridian:role" = "ingress" })
}

resource "aws_eip" "relay" {
  #checkov:skip=CKV2_AWS_19: attached to the relay NLB through subnet_mapping, the only way an NLB gets a static address.
  region           = local.aws
  domain           = "vpc"
  public_ipv4_pool = var.byoip_pool_id
  address          = local.byoip ? var.region.relay.ip : null
  tags             = merge(local.tags, { Name = "${local.name}-relay", "meridian:role" = "relay" })
}

resource "aws_lb" "ingress" {
  #checkov:skip=CKV_AWS_150: on unless the root lists the region in retiring_regions (terraform/README.md, "Retire a region"); checkov cannot evaluate that expression.
  #checkov:skip=CKV_AWS_91: no per-region S3 log bucket on purpose; connections are logged by the nodes (tracing, meridian_node_* metrics) and flows by VPC flow logs.
  region                           = local.aws
  name                             = substr("${local.name}-ws", 0, 32)
  load_balancer_type               = "network"
  internal                         = false
  security_groups                  = [aws_security_group.ingress_lb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection
  tags                             = local.tags

  dynamic "subnet_mapping" {
    for_each = aws_eip.ingress
    content {
      subnet_id     = aws_subnet.public[subnet_mapping.key].id
      allocation_id = subnet_mapping.value.id
    }
  }
}

resource "aws_lb_target_group" "nodes" {
  region               = local.aws
  name                 = substr("${local.name}-nodes", 0, 32)
  port                 = var.nodes.port
  protocol             = "TCP"
  vpc_id               = aws_vpc.this.id
  deregistration_delay = var.nodes.drain_seconds
  tags                 = local.tags

  # Traffic health: /readyz on the node's ops port (false while its Redis is away or it drains).
  health_check {
    protocol            = "HTTP"
    port                = tostring(var.nodes.ops_port)
    path                = "/readyz"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "websocket" {
  region            = local.aws
  load_balancer_arn = aws_lb.ingress.arn
  port              = 443
  protocol          = "TLS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = data.aws_acm_certificate.websocket.arn
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.nodes.arn
  }
}

# The relay endpoint is one address (the catalogue's relay.address), so the relay NLB has one
# subnet mapping; cross-zone load balancing reaches the active relay in any zone.
resource "aws_lb" "relay" {
  #checkov:skip=CKV_AWS_150: on unless the root lists the region in retiring_regions (terraform/README.md, "Retire a region"); checkov cannot evaluate that expression.
  #checkov:skip=CKV_AWS_91: NLB access logs exist only for TLS listeners; this one is UDP (QUIC), logged by the relays and VPC flow logs.
  region                           = local.aws
  name                             = substr("${local.name}-relay", 0, 32)
  load_balancer_type               = "network"
  internal                         = false
  security_groups                  = [aws_security_group.relay_lb.id]
  enable_cross_zone_load_balancing = true
  enable_deletion_protection       = var.deletion_protection
  tags                             = local.tags

  subnet_mapping {
    subnet_id     = aws_subnet.public[local.zones[0]].id
    allocation_id = aws_eip.relay.id
  }
}

resource "aws_lb_target_group" "relays" {
  region               = local.aws
  name                 = substr("${local.name}-relays", 0, 32)
  port                 = var.region.relay.port
  protocol             = "UDP"
  vpc_id               = aws_vpc.this.id
  deregistration_delay = 10
  tags                 = local.tags

  # Only the active relay (it holds the region's relay lease in Redis) answers 200, so QUIC from
  # peers always lands on it; a standby takes over when the lease moves.
  health_check {
    protocol            = "HTTP"
    port                = tostring(var.relays.health_port)
    path                = "/readyz"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "quic" {
  region            = local.aws
  load_balancer_arn = aws_lb.relay.arn
  port              = var.region.relay.port
  protocol          = "UDP"
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.relays.arn
  }
}
