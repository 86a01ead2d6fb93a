# ElastiCache Redis: a primary and `redis.replicas` replicas spread over the zones, automatic
# failover and Multi-AZ (a replica is promoted when the primary or its zone fails), encrypted at
# rest with the region key and in transit, reachable only from nodes and relays.
#
# Access is by RBAC user "meridian"; the built-in default user is switched off. Its password is
# generated at apply time as an ephemeral value and written to two write-only arguments (the
# ElastiCache user and the Secrets Manager secret the instances read), so it never lands in the
# state. Bumping redis.auth_version rotates it.

ephemeral "aws_secretsmanager_random_password" "redis" {
  region              = local.aws
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "redis_auth" {
  #checkov:skip=CKV2_AWS_57: rotated by bumping redis.auth_version, which writes the ElastiCache user's password and this secret in one apply; a rotation Lambda could not update the ElastiCache user atomically.
  region                  = local.aws
  name                    = "meridian/${var.region.name}/redis-auth"
  description             = "Password of the Redis user meridian in region ${var.region.name} (written by terraform as a write-only value)"
  kms_key_id              = aws_kms_key.region.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "redis_auth" {
  region                   = local.aws
  secret_id                = aws_secretsmanager_secret.redis_auth.id
  secret_string_wo         = ephemeral.aws_secretsmanager_random_password.redis.random_password
  secret_string_wo_version = var.redis.auth_version
}

resource "aws_elasticache_user" "default_off" {
  region               = local.aws
  user_id              = "${local.name}-default"
  user_name            = "default"
  engine               = "redis"
  access_string        = "off -@all"
  no_password_required = true
  tags                 = local.tags
}

resource "aws_elasticache_user" "meridian" {
  region    = local.aws
  user_id   = "${local.name}-app"
  user_name = "meridian"
  engine    = "redis"
  # Every key and channel; no administrative commands (KEYS, FLUSHALL, CONFIG, DEBUG ...).
  access_string        = "on ~* &* +@all -@dangerous"
  passwords_wo         = ephemeral.aws_secretsmanager_random_password.redis.random_password
  passwords_wo_version = var.redis.auth_version
  tags                 = local.tags
}

resource "aws_elasticache_user_group" "this" {
  region        = local.aws
  user_group_id = "${local.name}-users"
  engine        = "redis"
  user_ids      = [aws_elasticache_user.default_off.user_id, aws_elasticache_user.meridian.user_id]
  tags          = local.tags
}

resource "aws_elasticache_subnet_group" "this" {
  region     = local.aws
  name       = "${local.name}-redis"
  subnet_ids = [for s in aws_subnet.private : s.id]
  tags       = local.tags
}

resource "aws_cloudwatch_log_group" "redis_slow" {
  region            = local.aws
  name              = "/meridian/${var.region.name}/redis-slow-log"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.region.arn
  tags              = local.tags
}

resource "aws_elasticache_replication_group" "this" {
  region                      = local.aws
  replication_group_id        = "${local.name}-redis"
  description                 = "Meridian ${var.region.name} regional state"
  engine                      = "redis"
  engine_version              = var.redis.engine_version
  node_type                   = var.redis.node_type
  port                        = 6379
  num_cache_clusters          = 1 + var.redis.replicas
  preferred_cache_cluster_azs = [for i in range(1 + var.redis.replicas) : local.zones[i % length(local.zones)]]
  automatic_failover_enabled  = true
  multi_az_enabled            = true
  subnet_group_name           = aws_elasticache_subnet_group.this.name
  security_group_ids          = [aws_security_group.redis.id]
  at_rest_encryption_enabled  = true
  kms_key_id                  = aws_kms_key.region.arn
  transit_encryption_enabled  = true
  transit_encryption_mode     = var.redis.transit_encryption_mode
  user_group_ids              = [aws_elasticache_user_group.this.user_group_id]
  auto_minor_version_upgrade  = true
  snapshot_retention_limit    = var.redis.snapshot_retention_days
  maintenance_window          = var.redis.maintenance_window
  apply_immediately           = false
  tags                        = local.tags

  log_delivery_configuration {
    destination      = aws_cloudwatch_log_group.redis_slow.name
    destination_type = "cloudwatch-logs"
    log_format       = "json"
    log_type         = "slow-log"
  }
}

# Per-region relay certificate and key, issued offline by the mesh CA (whose private key never
# reaches a cloud). An operator puts the value; see terraform/README.md, "Secrets".
resource "aws_secretsmanager_secret" "relay_tls" {
  #checkov:skip=CKV2_AWS_57: the value is a certificate and key issued offline by the mesh CA; it is rotated by re-issuing, not by a rotation Lambda (which would need the CA key).
  region                  = local.aws
  name                    = "meridian/${var.region.name}/relay-tls"
  description             = "PEM certificate and key of the ${var.region.name} relay, issued by the mesh CA"
  kms_key_id              = aws_kms_key.region.arn
  recovery_window_in_days = 7
  tags                    = local.tags
}
