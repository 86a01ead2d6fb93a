variable "site" {
  description = "Where this geo-router instance runs: a name for the instance (the catalogue region it sits in) and the AWS region id."
  type = object({
    name         = string
    cloud_region = string
  })
}

variable "vpc_id" {
  description = "VPC to place the router in (the hosting region's, from modules/aws-region)."
  type        = string
}

variable "subnet_id" {
  description = "Public subnet for the router; it answers DNS on its own static address."
  type        = string
}

variable "kms_key_arn" {
  description = "Key that encrypts the router's volume (the hosting region's key)."
  type        = string
}

variable "image" {
  description = "Which AMI the router boots: newest image matching name_pattern owned by owner (same image as the regions; it carries the geo-router binary and unit)."
  type = object({
    name_pattern = optional(string, "meridian-*")
    owner        = optional(string, "self")
  })
  default = {}
}

variable "instance_type" {
  description = "EC2 instance type of the router."
  type        = string
  default     = "c7g.medium"
}

variable "http_port" {
  description = "Port of the router's public HTTP API (/v1/route, /v1/connect, /v1/rtt, /v1/regions), plain HTTP from anywhere. The admin API is not served here (see admin_port)."
  type        = number
  default     = 8053
}

variable "admin_port" {
  description = "Port of the router's admin API (drain, undrain, weight, audit). It is served over TLS only (a certificate the router makes on first boot; replace it with your CA's) and reachable only from admin_cidrs."
  type        = number
  default     = 8054
}

variable "admin_cidrs" {
  description = "Source ranges allowed to reach the admin API port. Default: none, so the admin API is reached from inside the instance (SSM session / IAP tunnel) until ranges are given. 0.0.0.0/0 and ::/0 are refused."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.admin_cidrs : can(cidrhost(c, 0)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "admin_cidrs: each entry must be a CIDR range other than 0.0.0.0/0 and ::/0 (the admin API must not be open to the internet)."
  }
}

variable "zone_name" {
  description = "DNS zone the routers are authoritative for (e.g. mesh.example.com)."
  type        = string
}

variable "catalogue_files" {
  description = "The region catalogue as file name => TOML text (regions/*.toml), written to /etc/meridian/regions on the router."
  type        = map(string)
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "name_servers" {
  description = "Fully qualified names of every geo-router of the zone (ns-<site>.<zone>.), which each router lists in its NS and SOA answers."
  type        = list(string)
}

variable "secrets" {
  description = "Secrets the router reads at boot, by reference only (never values): the Secrets Manager ARNs (as replicated into this router's AWS region) of the admin tokens and of the mesh CA certificate (the control store's certificate is issued by it)."
  type = object({
    router_admin_tokens_arn = string
    mesh_ca_cert_arn        = string
  })
}

variable "controls" {
  description = "The shared routing-control store (modules/aws-router-controls): its address, TLS port, certificate name, ACL user, and the ARNs of its AUTH secret and of the key that encrypts it. null: controls live in this router only (one router; the admin API still works)."
  type = object({
    address         = string
    port            = number
    tls_name        = string
    user            = string
    auth_secret_arn = string
    kms_key_arn     = string
  })
  default = null
}
