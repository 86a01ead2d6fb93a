variable "environment" {
  description = "Name of this deployment (tags, labels)."
  type        = string
  default     = "example"
}

variable "aws_default_region" {
  description = "Region for the AWS provider's global calls (IAM, Route 53); regional resources set their own."
  type        = string
  default     = "us-east-1"
}

variable "gcp_project" {
  description = "Google Cloud project the gcp regions, routers and secrets are deployed into."
  type        = string
}

variable "zone_name" {
  description = "The mesh's DNS zone, served by the geo-routers (e.g. mesh.example.com)."
  type        = string
}

variable "parent_zone_id" {
  description = "Route 53 hosted zone id of zone_name's parent; the delegation NS and glue records go there."
  type        = string
}

variable "tls_certificate_domain" {
  description = "Domain of the WebSocket certificate: the ACM certificate looked up in each AWS region."
  type        = string
}

variable "gcp_certificate_map" {
  description = "Certificate Manager map for the WebSocket listeners of gcp regions (//certificatemanager.googleapis.com/projects/P/locations/global/certificateMaps/NAME)."
  type        = string
}

variable "gcp_image" {
  description = "Compute Engine image (or image family path) with the Meridian binaries and units."
  type        = string
}

variable "byoip" {
  description = "The catalogue's addresses are the organisation's own (BYOIP): reserve exactly them. aws_byoip_pools maps AWS region id => public IPv4 pool id."
  type = object({
    enabled         = optional(bool, false)
    aws_byoip_pools = optional(map(string), {})
  })
  default = {}
}

variable "geo_router_sites" {
  description = "Catalogue regions that host a geo-router instance (one per site, on the region's cloud). null means every region. At least two sites; when the catalogue has both clouds, both must host one."
  type        = list(string)
  default     = null
}

variable "retiring_regions" {
  description = "Regions being retired: their load balancers lose deletion protection so the next apply after their region file is deleted can remove them (terraform/README.md, \"Retire a region\")."
  type        = list(string)
  default     = []
}

variable "region_overrides" {
  description = "Per-region sizing that differs from the module defaults, by catalogue region name: { nodes = {...}, relays = {...}, redis = {...} } as the region modules' variables. Optional: a new region needs none."
  type = map(object({
    nodes  = optional(map(any), {})
    relays = optional(map(any), {})
    redis  = optional(map(any), {})
  }))
  default = {}
}

variable "router_controls" {
  description = "The routing-control store every geo-router shares (modules/aws-router-controls): site = the AWS router site that hosts it (null: the first AWS router site by name); instance_type; tls_name = the name in its certificate (issued by the mesh CA); auth_version = bump to rotate its AUTH password."
  type = object({
    site          = optional(string)
    instance_type = optional(string, "t4g.small")
    tls_name      = optional(string, "controls.router.meridian")
    auth_version  = optional(number, 1)
  })
  default = {}
}
