output "name" {
  description = "Catalogue name of the region."
  value       = var.region.name
}

output "cloud" {
  description = "Always \"aws\"; lets callers and tests check the module matches the region file."
  value       = "aws"
}

output "cloud_region" {
  description = "AWS region id the region runs in."
  value       = local.aws
}

output "ingress_addresses" {
  description = "Public addresses of the WebSocket load balancer (what the catalogue's ingress.addresses must list)."
  value       = [for eip in aws_eip.ingress : eip.public_ip]
}

output "relay_address" {
  description = "Public address of the relay's UDP listener (the catalogue's relay.address IP)."
  value       = aws_eip.relay.public_ip
}

output "relay_egress_addresses" {
  description = "Addresses this region's relays dial peers from (NAT gateways); peers admit these and relay_address on their relay port."
  value       = [for eip in aws_eip.nat : eip.public_ip]
}

output "relay_lb_security_group_id" {
  description = "Security group of the relay NLB; relay-mesh-rules adds the peer regions' addresses to it."
  value       = aws_security_group.relay_lb.id
}

output "relays_security_group_id" {
  description = "Security group of the relay instances; relay-mesh-rules adds egress to peer relays to it."
  value       = aws_security_group.relays.id
}

output "vpc_id" {
  description = "VPC of the region."
  value       = aws_vpc.this.id
}

output "public_subnet_ids" {
  description = "Public subnets by zone (geo-router instances are placed here)."
  value       = { for zone, s in aws_subnet.public : zone => s.id }
}

output "kms_key_arn" {
  description = "The region's customer-managed key (secret replicas in this region use it)."
  value       = aws_kms_key.region.arn
}

output "redis_primary_endpoint" {
  description = "Primary endpoint of the Redis replication group (follows failover)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "redis_auth_secret_arn" {
  description = "Secrets Manager ARN of the Redis password (reference only)."
  value       = aws_secretsmanager_secret.redis_auth.arn
}

output "relay_tls_secret_arn" {
  description = "Secrets Manager ARN the operator puts this region's relay certificate and key into."
  value       = aws_secretsmanager_secret.relay_tls.arn
}

output "node_autoscaling_group" {
  description = "Name of the nodes' autoscaling group."
  value       = aws_autoscaling_group.nodes.name
}
