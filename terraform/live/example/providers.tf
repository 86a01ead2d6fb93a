# One provider per cloud. Every AWS resource sets its own `region` (provider 6 enhanced region
# support) and every Google resource its own region, so adding a catalogue region never needs a
# new provider block.
provider "aws" {
  region = var.aws_default_region

  default_tags {
    tags = local.tags
  }
}

provider "google" {
  project = var.gcp_project
}
