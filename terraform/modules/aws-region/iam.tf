# Instance roles: nodes and relays read exactly their secrets, decrypt with the region key, and
# run the SSM and CloudWatch agents (AWS managed policies). No SSH: shell access is SSM only.

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

locals {
  role_secrets = {
    node = [
      var.secrets.token_secret_arn,
      aws_secretsmanager_secret.redis_auth.arn,
    ]
    relay = [
      var.secrets.mesh_ca_cert_arn,
      aws_secretsmanager_secret.relay_tls.arn,
      aws_secretsmanager_secret.redis_auth.arn,
    ]
  }
}

data "aws_iam_policy_document" "read_secrets" {
  for_each = local.role_secrets

  statement {
    sid       = "ReadOwnSecrets"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = each.value
  }

  statement {
    sid       = "DecryptWithRegionKey"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.region.arn]
  }
}

resource "aws_iam_role" "instance" {
  for_each           = local.role_secrets
  name               = "${local.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "read_secrets" {
  for_each = local.role_secrets
  name     = "read-secrets"
  role     = aws_iam_role.instance[each.key].id
  policy   = data.aws_iam_policy_document.read_secrets[each.key].json
}

resource "aws_iam_role_policy_attachment" "ssm" {
  for_each   = local.role_secrets
  role       = aws_iam_role.instance[each.key].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy_attachment" "cloudwatch_agent" {
  for_each   = local.role_secrets
  role       = aws_iam_role.instance[each.key].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/CloudWatchAgentServerPolicy"
}

resource "aws_iam_instance_profile" "instance" {
  for_each = local.role_secrets
  name     = "${local.name}-${each.key}"
  role     = aws_iam_role.instance[each.key].name
  tags     = local.tags
}
