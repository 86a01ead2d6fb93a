# Deploys every region of the catalogue, each with the cloud its region file names.
#
# The catalogue reaches terraform as catalogue.json (beside this file), exported from regions/ by
# scripts/export-catalogue.py; CI fails when it is stale. So adding a region is adding its file
# (and committing the refreshed export): the for_each maps below come from module.catalogue and
# nothing here names a region. scripts/check-terraform-catalogue.py checks that every catalogue
# region maps to exactly one region-module instance of its cloud.

locals {
  tags = {
    "meridian:environment" = var.environment
    "meridian:managed-by"  = "terraform"
  }

  regions_dir = "${path.module}/../../../regions"
  # What the geo-routers load: the region files themselves.
  catalogue_files = { for f in fileset(local.regions_dir, "*.toml") : f => file("${local.regions_dir}/${f}") }

  aws = module.catalogue.by_cloud["aws"]
  gcp = module.catalogue.by_cloud["gcp"]

  router_sites = var.geo_router_sites == null ? keys(module.catalogue.regions) : var.geo_router_sites
  # One name server per router site; the same names go into the parent zone's NS record.
  name_servers = [for site in sort(local.router_sites) : "ns-${site}.${var.zone_name}."]

  aws_router_sites = sort([for name in local.router_sites : name if contains(keys(local.aws), name)])
  gcp_router_sites = sort([for name in local.router_sites : name if contains(keys(local.gcp), name)])
  # The routing-control store shared by every router runs beside one AWS router site (the first
  # by name unless router_controls.site says otherwise). None without an AWS router site.
  controls_site = coalesce(var.router_controls.site, try(local.aws_router_sites[0], "-"))
  controls_on   = contains(local.aws_router_sites, local.controls_site)
}

module "catalogue" {
  source         = "../../modules/catalogue"
  catalogue_json = file("${path.module}/catalogue.json")
}

module "mesh_secrets" {
  source = "../../modules/mesh-secrets"

  aws_regions = {
    for name, region in local.aws : name => {
      cloud_region = region.cloud_region
      kms_key_arn  = module.aws_region[name].kms_key_arn
    }
  }
  gcp_project   = length(local.gcp) > 0 ? var.gcp_project : null
  gcp_locations = distinct([for region in values(local.gcp) : region.cloud_region])
  tags          = local.tags
}

module "aws_region" {
  source   = "../../modules/aws-region"
  for_each = local.aws

  region                 = each.value
  byoip_pool_id          = var.byoip.enabled ? var.byoip.aws_byoip_pools[each.value.cloud_region] : null
  tls_certificate_domain = var.tls_certificate_domain
  secrets                = module.mesh_secrets.aws_arns[each.key]
  deletion_protection    = !contains(var.retiring_regions, each.key)
  nodes                  = try(var.region_overrides[each.key].nodes, {})
  relays                 = try(var.region_overrides[each.key].relays, {})
  redis                  = try(var.region_overrides[each.key].redis, {})
  catalogue_files        = local.catalogue_files
  tags                   = local.tags
}

module "gcp_region" {
  source   = "../../modules/gcp-region"
  for_each = local.gcp

  region          = each.value
  project         = var.gcp_project
  byoip           = var.byoip.enabled
  image           = var.gcp_image
  certificate_map = var.gcp_certificate_map
  secrets         = module.mesh_secrets.gcp_ids
  nodes           = try(var.region_overrides[each.key].nodes, {})
  relays          = try(var.region_overrides[each.key].relays, {})
  redis           = try(var.region_overrides[each.key].redis, {})
  catalogue_files = local.catalogue_files
  labels          = { for k, v in local.tags : replace(k, ":", "-") => v }
}

# The relay port of each region admits only the other regions' relay addresses.
module "relay_mesh" {
  source = "../../modules/relay-mesh-rules"

  regions = merge(
    {
      for name, m in module.aws_region : name => {
        cloud           = "aws"
        cloud_region    = m.cloud_region
        relay_ip        = local.aws[name].relay.ip
        relay_port      = local.aws[name].relay.port
        egress_ips      = m.relay_egress_addresses
        aws_relay_lb_sg = m.relay_lb_security_group_id
        aws_relays_sg   = m.relays_security_group_id
      }
    },
    {
      for name, m in module.gcp_region : name => {
        cloud         = "gcp"
        cloud_region  = m.cloud_region
        relay_ip      = local.gcp[name].relay.ip
        relay_port    = local.gcp[name].relay.port
        egress_ips    = m.relay_egress_addresses
        gcp_project   = var.gcp_project
        gcp_network   = m.network
        gcp_relay_tag = m.relay_tag
      }
    },
  )
}

# The routing controls (drain, disable, weight) every geo-router shares: one Redis over TLS in
# one AWS site, reachable only from the routers' addresses (terraform/README.md, "Routing
# controls").
module "router_controls" {
  source = "../../modules/aws-router-controls"
  count  = local.controls_on ? 1 : 0

  site = {
    name         = local.controls_site
    cloud_region = local.aws[local.controls_site].cloud_region
  }
  vpc_id    = module.aws_region[local.controls_site].vpc_id
  subnet_id = values(module.aws_region[local.controls_site].public_subnet_ids)[0]
  router_addresses = merge(
    { for site, m in module.aws_geo_router : site => m.address },
    { for site, m in module.gcp_geo_router : site => m.address },
  )
  instance_type = var.router_controls.instance_type
  tls_name      = var.router_controls.tls_name
  auth_version  = var.router_controls.auth_version
  gcp_project   = length(local.gcp_router_sites) > 0 ? var.gcp_project : null
  gcp_locations = distinct([for site in local.gcp_router_sites : local.gcp[site].cloud_region])
  tags          = local.tags
}

# Geo-routers: one instance per site, on the hosting region's cloud and network.
module "aws_geo_router" {
  source   = "../../modules/aws-geo-router"
  for_each = { for name in local.router_sites : name => local.aws[name] if contains(keys(local.aws), name) }

  site = {
    name         = each.key
    cloud_region = each.value.cloud_region
  }
  vpc_id          = module.aws_region[each.key].vpc_id
  subnet_id       = values(module.aws_region[each.key].public_subnet_ids)[0]
  kms_key_arn     = module.aws_region[each.key].kms_key_arn
  zone_name       = var.zone_name
  catalogue_files = local.catalogue_files
  name_servers    = local.name_servers
  secrets         = module.mesh_secrets.aws_arns[each.key]
  controls = local.controls_on ? {
    address         = module.router_controls[0].address
    port            = module.router_controls[0].port
    tls_name        = module.router_controls[0].tls_name
    user            = module.router_controls[0].user
    auth_secret_arn = module.router_controls[0].auth_secret_arn
    kms_key_arn     = module.router_controls[0].kms_key_arn
  } : null
  tags = local.tags
}

module "gcp_geo_router" {
  source   = "../../modules/gcp-geo-router"
  for_each = { for name in local.router_sites : name => local.gcp[name] if contains(keys(local.gcp), name) }

  site = {
    name         = each.key
    cloud_region = each.value.cloud_region
  }
  project         = var.gcp_project
  network         = module.gcp_region[each.key].network
  subnetwork      = module.gcp_region[each.key].subnetwork
  kms_key_id      = module.gcp_region[each.key].kms_key_id
  image           = var.gcp_image
  zone_name       = var.zone_name
  catalogue_files = local.catalogue_files
  name_servers    = local.name_servers
  secrets         = module.mesh_secrets.gcp_ids
  controls = local.controls_on ? {
    address        = module.router_controls[0].address
    port           = module.router_controls[0].port
    tls_name       = module.router_controls[0].tls_name
    user           = module.router_controls[0].user
    auth_secret_id = module.router_controls[0].auth_gcp_secret_id
  } : null
  labels = { for k, v in local.tags : replace(k, ":", "-") => v }
}

module "dns_delegation" {
  source = "../../modules/dns-delegation"

  parent_zone_id = var.parent_zone_id
  zone_name      = var.zone_name
  name_servers = merge(
    { for site, m in module.aws_geo_router : "ns-${site}" => m.address },
    { for site, m in module.gcp_geo_router : "ns-${site}" => m.address },
  )
}
