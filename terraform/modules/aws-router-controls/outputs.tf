output "address" {
  description = "Static public IPv4 address of the control store (what tls_name maps to on every router)."
  value       = aws_eip.controls.public_ip
}

output "port" {
  description = "TLS port of the control store."
  value       = var.port
}

output "tls_name" {
  description = "Name in the control store's certificate; routers connect to rediss://<user>@<tls_name>:<port>/."
  value       = var.tls_name
}

output "user" {
  description = "Redis ACL user of the routers."
  value       = local.user
}

output "auth_secret_arn" {
  description = "Secrets Manager ARN of the AUTH password (home region of the control store; AWS routers read it cross-region)."
  value       = aws_secretsmanager_secret.auth.arn
}

output "auth_gcp_secret_id" {
  description = "Secret Manager id of the AUTH password's copy for gcp routers, or null."
  value       = local.gcp_enabled ? google_secret_manager_secret.auth[0].id : null
}

output "kms_key_arn" {
  description = "KMS key that encrypts the AUTH secret; AWS routers are granted kms:Decrypt on it."
  value       = aws_kms_key.controls.arn
}

output "tls_secret_arn" {
  description = "Secrets Manager ARN where the operator puts the control store's certificate and key (JSON {\"cert\", \"key\"})."
  value       = aws_secretsmanager_secret.tls.arn
}
