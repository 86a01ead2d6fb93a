terraform {
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.62.0, < 7.0.0"
    }
    google = {
      source  = "hashicorp/google"
      version = ">= 6.23.0, < 8.0.0"
    }
  }

  # State holds no secret value we write (write-only arguments), but it does hold what providers
  # read back (e.g. Memorystore's AUTH string): keep it in an encrypted, access-controlled bucket.
  # Partial configuration: `terraform init -backend-config=backend.hcl` (terraform/README.md).
  backend "s3" {}
}
