variable "parent_zone_id" {
  description = "Route 53 hosted zone id of the parent zone (e.g. example.com) that delegates the mesh zone."
  type        = string
}

variable "zone_name" {
  description = "The delegated mesh zone the geo-routers are authoritative for (e.g. mesh.example.com). Must be a subdomain of the parent zone."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9-]+\\.)+[a-z]{2,}$", var.zone_name))
    error_message = "zone_name must be a lower-case DNS name without a trailing dot."
  }
}

variable "name_servers" {
  description = "The geo-routers, as label => IPv4 address. Each becomes a name server <label>.<zone_name> with a glue A record in the parent zone."
  type        = map(string)

  validation {
    condition     = length(var.name_servers) >= 2
    error_message = "Delegate to at least two geo-routers: one name server is a single point of failure."
  }

  validation {
    condition     = alltrue([for ip in values(var.name_servers) : can(cidrhost("${ip}/32", 0))])
    error_message = "Every name server needs an IPv4 address."
  }
}

variable "ns_ttl" {
  description = "TTL of the delegation NS and glue records, in seconds."
  type        = number
  default     = 3600
}
