# Security groups. Traffic paths: clients -> ingress NLB (TCP 443) -> nodes (node port);
# peer relays -> relay NLB (UDP relay port) -> relays; nodes and relays -> Redis (6379);
# nodes and relays -> AWS APIs (TCP 443: Secrets Manager, CloudWatch, SSM).
# The relay port's peer rules (other regions' relay addresses only) are made by the
# relay-mesh-rules module, which sees every region's addresses.

resource "aws_security_group" "ingress_lb" {
  region      = local.aws
  name        = "${local.name}-ingress-lb"
  description = "Meridian ${var.region.name} ingress NLB: WebSocket over TLS from clients"
  vpc_id      = aws_vpc.this.id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "ingress_lb_clients" {
  for_each          = toset(var.client_cidrs)
  region            = local.aws
  security_group_id = aws_security_group.ingress_lb.id
  description       = "WebSocket (wss) from clients"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "ingress_lb_to_node_ops" {
  region                       = local.aws
  security_group_id            = aws_security_group.ingress_lb.id
  description                  = "Health-check the region nodes' ops port (/readyz)"
  ip_protocol                  = "tcp"
  from_port                    = var.nodes.ops_port
  to_port                      = var.nodes.ops_port
  referenced_security_group_id = aws_security_group.nodes.id
}

resource "aws_vpc_security_group_ingress_rule" "node_ops_from_lb" {
  region                       = local.aws
  security_group_id            = aws_security_group.nodes.id
  description                  = "/readyz checks from the ingress NLB on the ops port"
  ip_protocol                  = "tcp"
  from_port                    = var.nodes.ops_port
  to_port                      = var.nodes.ops_port
  referenced_security_group_id = aws_security_group.ingress_lb.id
}

resource "aws_vpc_security_group_egress_rule" "ingress_lb_to_nodes" {
  region                       = local.aws
  security_group_id            = aws_security_group.ingress_lb.id
  description                  = "Forward to and health-check the region nodes"
  ip_protocol                  = "tcp"
  from_port                    = var.nodes.port
  to_port                      = var.nodes.port
  referenced_security_group_id = aws_security_group.nodes.id
}

resource "aws_security_group" "nodes" {
  region      = local.aws
  name        = "${local.name}-nodes"
  description = "Meridian ${var.region.name} region nodes"
  vpc_id      = aws_vpc.this.id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "nodes_from_lb" {
  region                       = local.aws
  security_group_id            = aws_security_group.nodes.id
  description                  = "WebSocket from the ingress NLB"
  ip_protocol                  = "tcp"
  from_port                    = var.nodes.port
  to_port                      = var.nodes.port
  referenced_security_group_id = aws_security_group.ingress_lb.id
}

resource "aws_vpc_security_group_egress_rule" "nodes_to_redis" {
  region                       = local.aws
  security_group_id            = aws_security_group.nodes.id
  description                  = "Regional state in Redis"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.redis.id
}

resource "aws_vpc_security_group_egress_rule" "nodes_to_aws_apis" {
  region            = local.aws
  security_group_id = aws_security_group.nodes.id
  description       = "AWS APIs over HTTPS: Secrets Manager, CloudWatch, SSM"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_security_group" "relay_lb" {
  region      = local.aws
  name        = "${local.name}-relay-lb"
  description = "Meridian ${var.region.name} relay NLB: QUIC from peer regions' relays only"
  vpc_id      = aws_vpc.this.id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "relay_lb_to_relays" {
  region                       = local.aws
  security_group_id            = aws_security_group.relay_lb.id
  description                  = "Forward QUIC to the relays"
  ip_protocol                  = "udp"
  from_port                    = var.region.relay.port
  to_port                      = var.region.relay.port
  referenced_security_group_id = aws_security_group.relays.id
}

resource "aws_vpc_security_group_egress_rule" "relay_lb_health" {
  region                       = local.aws
  security_group_id            = aws_security_group.relay_lb.id
  description                  = "Health-check the relays (only the active one is ready)"
  ip_protocol                  = "tcp"
  from_port                    = var.relays.health_port
  to_port                      = var.relays.health_port
  referenced_security_group_id = aws_security_group.relays.id
}

resource "aws_security_group" "relays" {
  region      = local.aws
  name        = "${local.name}-relays"
  description = "Meridian ${var.region.name} interregion relays"
  vpc_id      = aws_vpc.this.id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "relays_quic" {
  region                       = local.aws
  security_group_id            = aws_security_group.relays.id
  description                  = "QUIC from the relay NLB (which admits peer relays only)"
  ip_protocol                  = "udp"
  from_port                    = var.region.relay.port
  to_port                      = var.region.relay.port
  referenced_security_group_id = aws_security_group.relay_lb.id
}

resource "aws_vpc_security_group_ingress_rule" "relays_health" {
  region                       = local.aws
  security_group_id            = aws_security_group.relays.id
  description                  = "Readiness checks from the relay NLB"
  ip_protocol                  = "tcp"
  from_port                    = var.relays.health_port
  to_port                      = var.relays.health_port
  referenced_security_group_id = aws_security_group.relay_lb.id
}

resource "aws_vpc_security_group_egress_rule" "relays_to_redis" {
  region                       = local.aws
  security_group_id            = aws_security_group.relays.id
  description                  = "Regional state in Redis (remote members, interest, history)"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = aws_security_group.redis.id
}

resource "aws_vpc_security_group_egress_rule" "relays_to_aws_apis" {
  region            = local.aws
  security_group_id = aws_security_group.relays.id
  description       = "AWS APIs over HTTPS: Secrets Manager, CloudWatch, SSM"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_security_group" "redis" {
  region      = local.aws
  name        = "${local.name}-redis"
  description = "Meridian ${var.region.name} ElastiCache Redis: nodes and relays only"
  vpc_id      = aws_vpc.this.id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "redis_from" {
  for_each = {
    nodes  = aws_security_group.nodes.id
    relays = aws_security_group.relays.id
  }
  region                       = local.aws
  security_group_id            = aws_security_group.redis.id
  description                  = "Redis from the region's ${each.key}"
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
  referenced_security_group_id = each.value
}
