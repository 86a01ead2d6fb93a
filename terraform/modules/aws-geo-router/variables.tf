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
  description = "Port of the router's HTTP API (/v1/route). The router serves plain HTTP today; TLS in front of it is not part of this rollout yet."
  type        = number
  default     = 8053
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
