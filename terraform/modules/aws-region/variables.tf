variable "region" {
  description = "The region's catalogue entry, as exported by scripts/export-catalogue.py (schema in terraform/README.md). `cloud` must be \"aws\"; `cloud_region` is the AWS region id."
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
    condition     = var.region.cloud == "aws" && var.region.cloud_region != ""
    error_message = "The aws-region module deploys only catalogue regions with cloud = \"aws\" and a cloud_region."
  }
}

variable "byoip_pool_id" {
  description = "ID of a BYOIP public IPv4 pool holding the catalogue's addresses. When set, the ingress and relay elastic IPs are the catalogue's own addresses (the region file stays the source of truth); when null, Amazon allocates addresses and the root configuration's check reports any difference from the catalogue."
  type        = string
  default     = null
}

variable "vpc_cidr" {
  description = "CIDR of the region's VPC. Regions are not peered (they meet over the internet through the relays), so every region may use the same range."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a CIDR block of /20 or larger (it is split into per-zone subnets)."
  }
}

variable "availability_zone_suffixes" {
  description = "Zones the region spans, as suffixes of the AWS region id (\"a\" is us-east-1a). Pinned rather than \"the first N available\", so a zone AWS adds later never moves subnets. Nodes, relays, NAT gateways and the Redis replica are spread over them."
  type        = list(string)
  default     = ["a", "b"]

  validation {
    condition     = length(var.availability_zone_suffixes) >= 2 && length(var.availability_zone_suffixes) <= 4 && alltrue([for s in var.availability_zone_suffixes : can(regex("^[a-z]$", s))])
    error_message = "availability_zone_suffixes must list 2 to 4 single letters: one zone is not highly available."
  }
}

variable "image" {
  description = "Which AMI nodes and relays boot: the newest image whose name matches name_pattern, owned by owner. The image carries the Meridian binaries and the deploy/systemd units (see terraform/README.md); AMIs are regional, so the image pipeline copies it to every AWS region of the catalogue."
  type = object({
    name_pattern = optional(string, "meridian-*")
    owner        = optional(string, "self")
  })
  default = {}
}

variable "nodes" {
  description = "Region-node autoscaling group: instance type, size bounds, the node's client port and ops port (/healthz, /readyz, /metrics; never behind the public listener), and the scaling targets (average CPU percent, and open WebSocket connections per node from the node's meridian_node_connections gauge)."
  type = object({
    instance_type               = optional(string, "c7g.large")
    min_size                    = optional(number, 2)
    max_size                    = optional(number, 20)
    port                        = optional(number, 8080)
    ops_port                    = optional(number, 9090)
    cpu_target_percent          = optional(number, 60)
    connections_per_node_target = optional(number, 10000)
    drain_seconds               = optional(number, 15)
  })
  default = {}

  validation {
    condition     = var.nodes.min_size >= 2 && var.nodes.max_size >= var.nodes.min_size
    error_message = "nodes.min_size must be at least 2 (one per zone) and max_size at least min_size."
  }
}

variable "relays" {
  description = "Interregion-relay group: instance type, count (one active, the rest standby: only the active relay's readiness endpoint answers 200, so the UDP listener sends QUIC to it), and the relay's HTTP health/metrics port."
  type = object({
    instance_type = optional(string, "c7g.medium")
    count         = optional(number, 2)
    health_port   = optional(number, 9102)
  })
  default = {}

  validation {
    condition     = var.relays.count >= 2
    error_message = "relays.count must be at least 2 (active and standby in different zones)."
  }
}

variable "redis" {
  description = "ElastiCache Redis replication group: node type, engine version, replicas (at least one, in another zone, for automatic failover), snapshot retention days, and the in-transit encryption mode (\"required\" once the node's Redis client speaks TLS; see terraform/README.md)."
  type = object({
    node_type               = optional(string, "cache.r7g.large")
    engine_version          = optional(string, "7.1")
    replicas                = optional(number, 1)
    snapshot_retention_days = optional(number, 3)
    transit_encryption_mode = optional(string, "required")
    maintenance_window      = optional(string, "sun:05:00-sun:06:00")
    auth_version            = optional(number, 1)
  })
  default = {}

  validation {
    condition     = var.redis.replicas >= 1 && var.redis.snapshot_retention_days >= 1
    error_message = "redis.replicas must be at least 1 (automatic failover needs a replica) and snapshots must be kept at least a day."
  }

  validation {
    condition     = contains(["required", "preferred"], var.redis.transit_encryption_mode)
    error_message = "redis.transit_encryption_mode is \"required\" or \"preferred\"."
  }
}

variable "tls_certificate_domain" {
  description = "Domain of the ACM certificate for the WebSocket listener (wss:// on TCP 443), looked up in this region (ACM certificates are regional). A reference, not key material: the key stays in ACM."
  type        = string
}

variable "client_cidrs" {
  description = "Who may open WebSockets (TCP 443 on the ingress load balancer). Users come from anywhere."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "secrets" {
  description = "Secrets shared by the whole mesh, by reference only (never values): the Secrets Manager ARNs of the connection-token secret and of the mesh CA certificate, as replicated into this region by the mesh-secrets module."
  type = object({
    token_secret_arn = string
    mesh_ca_cert_arn = string
  })
}

variable "deletion_protection" {
  description = "Protects the load balancers from deletion. Turned off for a region being retired (terraform/README.md, \"Retire a region\")."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "Retention of the region's CloudWatch log groups (VPC flow logs, Redis slow log)."
  type        = number
  default     = 365
}

variable "metrics_namespace" {
  description = "CloudWatch namespace the CloudWatch agent publishes the node's Prometheus gauges to (the connections-per-node scaling policy reads it)."
  type        = string
  default     = "Meridian"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "catalogue_files" {
  description = "The region catalogue as file name => TOML text (regions/*.toml), written to /etc/meridian/regions on relays (they dial peers at the catalogue's relay addresses). A catalogue change rolls the relays."
  type        = map(string)
}
