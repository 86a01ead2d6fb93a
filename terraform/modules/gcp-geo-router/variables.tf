variable "site" {
  description = "Where this geo-router instance runs: a name (the catalogue region it sits in), the Google Cloud region id and the zone suffix."
  type = object({
    name         = string
    cloud_region = string
    zone_suffix  = optional(string, "a")
  })
}

variable "project" {
  description = "Google Cloud project id."
  type        = string
}

variable "subnetwork" {
  description = "Subnetwork self link to place the router in (the hosting region's, from modules/gcp-region)."
  type        = string
}

variable "network" {
  description = "Network self link of that subnetwork (for the router's firewall rule)."
  type        = string
}

variable "kms_key_id" {
  description = "Cloud KMS key that encrypts the router's disk (the hosting region's key)."
  type        = string
}

variable "image" {
  description = "Compute Engine image with the geo-router binary and unit (same image as the regions)."
  type        = string
}

variable "machine_type" {
  description = "Machine type of the router."
  type        = string
  default     = "e2-standard-2"
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

variable "labels" {
  description = "Labels added to every resource that takes them."
  type        = map(string)
  default     = {}
}

variable "name_servers" {
  description = "Fully qualified names of every geo-router of the zone (ns-<site>.<zone>.), which each router lists in its NS and SOA answers."
  type        = list(string)
}

variable "secrets" {
  description = "Secret Manager ids (projects/P/secrets/NAME) the router reads at boot, by reference only: the admin tokens and the mesh CA certificate (the control store's certificate is issued by it)."
  type = object({
    router_admin_tokens_id = string
    mesh_ca_cert_id        = string
  })
}

variable "controls" {
  description = "The shared routing-control store (modules/aws-router-controls): its address, TLS port, certificate name, ACL user, and the Secret Manager id of its AUTH password's copy. null: controls live in this router only."
  type = object({
    address        = string
    port           = number
    tls_name       = string
    user           = string
    auth_secret_id = string
  })
  default = null
}
