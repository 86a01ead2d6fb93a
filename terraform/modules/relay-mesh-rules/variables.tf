variable "regions" {
  description = "Every deployed region: name => { cloud, cloud_region, relay_ip (catalogue endpoint), relay_port, egress_ips (addresses its relays dial from), and the cloud's attachment points: aws_relay_lb_sg / aws_relays_sg for aws, gcp_project / gcp_network / gcp_relay_tag for gcp (null otherwise) }."
  type = map(object({
    cloud           = string
    cloud_region    = string
    relay_ip        = string
    relay_port      = number
    egress_ips      = list(string)
    aws_relay_lb_sg = optional(string)
    aws_relays_sg   = optional(string)
    gcp_project     = optional(string)
    gcp_network     = optional(string)
    gcp_relay_tag   = optional(string)
  }))

  validation {
    condition     = alltrue([for r in values(var.regions) : contains(["aws", "gcp"], r.cloud)])
    error_message = "Every region's cloud must be aws or gcp."
  }
}
