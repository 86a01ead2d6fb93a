terraform {
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.62.0, < 7.0.0"
    }
    google = {
      source = "hashicorp/google"
      # 6.23+: write-only secret_data_wo (the AUTH password's copy for the gcp routers).
      version = ">= 6.23.0, < 8.0.0"
    }
  }
}
