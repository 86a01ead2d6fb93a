terraform {
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.x: every regional resource takes `region`, so one provider serves every site.
      version = ">= 6.62.0, < 7.0.0"
    }
  }
}
