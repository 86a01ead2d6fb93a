variable "catalogue_json" {
  description = "Text of the exported catalogue (terraform/live/<env>/catalogue.json, written by scripts/export-catalogue.py from regions/*.toml)."
  type        = string

  validation {
    condition     = try(jsondecode(var.catalogue_json).schema, 0) == 1
    error_message = "The catalogue export must have schema = 1; re-run scripts/export-catalogue.py."
  }
}

variable "allow_undeployable" {
  description = "Accept regions whose cloud terraform cannot deploy (cloud = \"local\"); they are left out of every cloud map. Off for real environments."
  type        = bool
  default     = false
}
