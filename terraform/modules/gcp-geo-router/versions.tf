terraform {
  required_version = ">= 1.11.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.23+: write-only secret_data_wo on secret versions.
      version = ">= 6.23.0, < 8.0.0"
    }
  }
}
