variable "aws_regions" {
  description = "AWS regions of the catalogue as region name => { cloud_region, kms_key_arn }. The shared secrets are created in the first (by name) and replicated to the others' AWS regions, each replica under that region's key."
  type = map(object({
    cloud_region = string
    kms_key_arn  = string
  }))
}

variable "gcp_project" {
  description = "Google Cloud project for the shared secrets; null when the catalogue has no gcp region."
  type        = string
  default     = null
}

variable "gcp_locations" {
  description = "Google Cloud regions of the catalogue; the shared secrets are replicated to each."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags and labels added to every resource."
  type        = map(string)
  default     = {}
}
