variable "site" {
  description = "The geo-router site that hosts the control store: its name (a catalogue region on AWS) and AWS region id."
  type = object({
    name         = string
    cloud_region = string
  })
}

variable "vpc_id" {
  description = "VPC of that site (from modules/aws-region)."
  type        = string
}

variable "subnet_id" {
  description = "Public subnet for the control store: every router, on either cloud, reaches it on its static address."
  type        = string
}

variable "router_addresses" {
  description = "Public IPv4 address of every geo-router, by site. Only these may connect to the control store's port."
  type        = map(string)

  validation {
    condition     = alltrue([for ip in values(var.router_addresses) : can(cidrhost("${ip}/32", 0))])
    error_message = "router_addresses must be IPv4 addresses."
  }
}

variable "image" {
  description = "Which AMI the control store boots: newest image matching name_pattern owned by owner (the Meridian image, which carries redis-server and the units)."
  type = object({
    name_pattern = optional(string, "meridian-*")
    owner        = optional(string, "self")
  })
  default = {}
}

variable "instance_type" {
  description = "EC2 instance type. Controls are a few KiB and a few reads per second per router: the smallest type will do."
  type        = string
  default     = "t4g.small"
}

variable "port" {
  description = "TLS port of the control store's Redis (the plain port is disabled)."
  type        = number
  default     = 6380

  validation {
    condition     = var.port > 1024 && var.port < 65536
    error_message = "port must be in 1025..65535."
  }
}

variable "tls_name" {
  description = "DNS name in the control store's certificate (issued by the mesh CA); routers map it to the store's address in /etc/hosts and verify the certificate against it."
  type        = string
  default     = "controls.router.meridian"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$", var.tls_name))
    error_message = "tls_name must be a lower-case DNS name with at least two labels."
  }
}

variable "auth_version" {
  description = "Version of the AUTH password; bump it to rotate (terraform writes a new password to both clouds' secret stores; restart the control store and the routers)."
  type        = number
  default     = 1
}

variable "gcp_project" {
  description = "Google Cloud project of the gcp geo-routers, which get a copy of the AUTH password in Secret Manager; null when no router runs on Google Cloud."
  type        = string
  default     = null
}

variable "gcp_locations" {
  description = "Google Cloud regions of the gcp geo-routers; the AUTH password's copy is replicated to each."
  type        = list(string)
  default     = []
}

variable "volume_size_gb" {
  description = "Size of the encrypted root volume, which holds Redis's append-only file."
  type        = number
  default     = 20
}

variable "tags" {
  description = "Tags and labels added to every resource."
  type        = map(string)
  default     = {}
}
