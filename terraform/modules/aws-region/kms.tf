# One customer-managed key per region encrypts everything at rest: secrets, Redis, EBS volumes
# and the region's log groups.

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

  statement {
    sid = "CloudWatchLogsEncrypts"
    actions = [
      "kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey",
    ]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.aws}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${local.aws}:${data.aws_caller_identity.current.account_id}:log-group:/meridian/${var.region.name}/*"]
    }
  }
}

resource "aws_kms_key" "region" {
  region                  = local.aws
  description             = "Meridian ${var.region.name}: secrets, Redis, volumes, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "region" {
  region        = local.aws
  name          = "alias/${local.name}"
  target_key_id = aws_kms_key.region.key_id
}
