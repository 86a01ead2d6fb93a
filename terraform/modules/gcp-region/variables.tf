variable "region" {
  description = "The region's catalogue entry, as exported by scripts/export-catalogue.py (schema in terraform/README.md). `cloud` must be \"gcp\"; `cloud_region` is the Google Cloud region id."
  type = object({
    name         = string
    display_name = string
    cloud        = string
    cloud_region = string
    capacity     = number
    latitude     = number
    longitude    = number
    ingress = object({
      addresses  = list(string)
      ws_url     = string
      health_url = string
    })
    relay = object({
      address = string
      ip      = string
      port    = number
    })
  })

  validation {
    condition     = var.region.cloud == "gcp" && var.region.cloud_region != ""
    error_message = "The gcp-region module deploys only catalogue regions with cloud = \"gcp\" and a cloud_region."
  }
}

variable "project" {
  description = "Google Cloud project id the region is deployed into."
  type        = string
}

variable "byoip" {
  description = "Reserve the catalogue's own addresses (they must lie in a BYOIP public delegated prefix of the project) instead of letting Google allocate them. With false, the root configuration's check reports any difference from the catalogue."
  type        = bool
  default     = false
}

variable "subnet_cidr" {
  description = "Primary range of the region's subnetwork. Regions are not peered, so every region may use the same range."
  type        = string
  default     = "10.50.0.0/20"

  validation {
    condition     = can(cidrnetmask(var.subnet_cidr))
    error_message = "subnet_cidr must be a CIDR block."
  }
}

variable "zone_suffixes" {
  description = "Zones the managed instance groups and Memorystore span, as suffixes of the region id (\"a\" is europe-west3-a). Memorystore puts its primary in the first and its replica in the second."
  type        = list(string)
  default     = ["a", "b"]

  validation {
    condition     = length(var.zone_suffixes) >= 2 && alltrue([for s in var.zone_suffixes : can(regex("^[a-z]$", s))])
    error_message = "zone_suffixes must list at least 2 single letters: one zone is not highly available."
  }
}

variable "image" {
  description = "Compute Engine image (self link or family path) with the Meridian binaries and deploy/systemd units installed. Used by nodes and relays."
  type        = string
}

variable "nodes" {
  description = "Region-node managed instance group: machine type, size bounds, client port and ops port (/healthz, /readyz, /metrics; never behind the public listener), and autoscaling targets (CPU fraction, and open WebSockets per node from the node's meridian_node_connections gauge)."
  type = object({
    machine_type                = optional(string, "c3-standard-4")
    min_size                    = optional(number, 2)
    max_size                    = optional(number, 20)
    port                        = optional(number, 8080)
    ops_port                    = optional(number, 9090)
    cpu_target                  = optional(number, 0.6)
    connections_per_node_target = optional(number, 10000)
    drain_seconds               = optional(number, 15)
  })
  default = {}

  validation {
    condition     = var.nodes.min_size >= 2 && var.nodes.max_size >= var.nodes.min_size && var.nodes.cpu_target > 0 && var.nodes.cpu_target < 1
    error_message = "nodes.min_size must be at least 2, max_size at least min_size, and cpu_target a fraction in (0, 1)."
  }
}

variable "relays" {
  description = "Interregion-relay group: machine type, count (one active, the rest standby: only the active relay's readiness endpoint answers 200), and the relay's HTTP health/metrics port."
  type = object({
    machine_type = optional(string, "c3-standard-4")
    count        = optional(number, 2)
    health_port  = optional(number, 9102)
  })
  default = {}

  validation {
    condition     = var.relays.count >= 2
    error_message = "relays.count must be at least 2 (active and standby in different zones)."
  }
}

variable "redis" {
  description = "Memorystore for Redis, Standard tier (a replica in another zone, automatic failover): size, version, replicas, and a number to bump to copy a rotated AUTH string into Secret Manager."
  type = object({
    memory_size_gb = optional(number, 5)
    redis_version  = optional(string, "REDIS_7_2")
    replicas       = optional(number, 1)
    auth_version   = optional(number, 1)
  })
  default = {}

  validation {
    condition     = var.redis.replicas >= 1 && var.redis.replicas <= 5
    error_message = "redis.replicas must be 1 to 5 (Standard tier needs a replica for failover)."
  }
}

variable "certificate_map" {
  description = "Certificate Manager certificate map for the WebSocket listener (wss:// on TCP 443), as //certificatemanager.googleapis.com/projects/P/locations/global/certificateMaps/NAME. A reference: the key stays in Certificate Manager."
  type        = string
}

variable "secrets" {
  description = "Secret Manager ids (projects/P/secrets/NAME) of secrets shared by the whole mesh, by reference only: the connection-token secret and the mesh CA certificate."
  type = object({
    token_secret_id = string
    mesh_ca_cert_id = string
  })
}

variable "labels" {
  description = "Labels added to every resource that takes them."
  type        = map(string)
  default     = {}
}

variable "catalogue_files" {
  description = "The region catalogue as file name => TOML text (regions/*.toml), written to /etc/meridian/regions on relays (they dial peers at the catalogue's relay addresses). A catalogue change rolls the relays."
  type        = map(string)
}
