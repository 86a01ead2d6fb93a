output "aws_arns" {
  description = "For each AWS catalogue region, the ARNs of the shared secrets as seen in its AWS region (the home secret, or its replica): { region name => { token_secret_arn, mesh_ca_cert_arn, router_admin_tokens_arn } }."
  value = {
    for name, r in var.aws_regions : name => {
      token_secret_arn        = replace(aws_secretsmanager_secret.shared["token-secret"].arn, ":${local.aws_home.cloud_region}:", ":${r.cloud_region}:")
      mesh_ca_cert_arn        = replace(aws_secretsmanager_secret.shared["mesh-ca-cert"].arn, ":${local.aws_home.cloud_region}:", ":${r.cloud_region}:")
      router_admin_tokens_arn = replace(aws_secretsmanager_secret.shared["router-admin-tokens"].arn, ":${local.aws_home.cloud_region}:", ":${r.cloud_region}:")
    }
  }
}

output "gcp_ids" {
  description = "Secret Manager ids of the shared secrets on Google Cloud: { token_secret_id, mesh_ca_cert_id, router_admin_tokens_id }, or null without gcp regions."
  value = local.gcp_enabled ? {
    token_secret_id        = google_secret_manager_secret.shared["token-secret"].id
    mesh_ca_cert_id        = google_secret_manager_secret.shared["mesh-ca-cert"].id
    router_admin_tokens_id = google_secret_manager_secret.shared["router-admin-tokens"].id
  } : null
}
