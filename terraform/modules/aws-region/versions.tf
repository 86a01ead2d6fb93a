terraform {
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.x: every regional resource takes `region` (one provider serves every catalogue region);
      # 6.62 has the write-only `passwords_wo` on aws_elasticache_user.
      version = ">= 6.62.0, < 7.0.0"
    }
  }
}
