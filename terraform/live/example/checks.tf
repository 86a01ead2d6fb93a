# Plan-time checks (warnings, they do not block an apply).

check "geo_routers_span_sites_and_clouds" {
  assert {
    condition     = length(local.router_sites) >= 2
    error_message = "Run geo-routers in at least two sites: the mesh zone has one name server per site."
  }

  assert {
    condition = (length(local.aws) == 0 || length(local.gcp) == 0) || (
      length([for s in local.router_sites : s if contains(keys(local.aws), s)]) > 0 &&
      length([for s in local.router_sites : s if contains(keys(local.gcp), s)]) > 0
    )
    error_message = "The catalogue spans AWS and Google Cloud: put a geo-router on each, so DNS survives the loss of one cloud."
  }

  assert {
    condition     = alltrue([for s in local.router_sites : contains(keys(module.catalogue.regions), s)])
    error_message = "geo_router_sites must name catalogue regions."
  }
}

check "router_controls_are_shared" {
  assert {
    condition     = local.controls_on
    error_message = "No shared routing-control store: router_controls.site must be an AWS geo-router site (the catalogue needs one). Without it every router keeps its own controls, so a drain on one router does not reach the others."
  }
}

# Without BYOIP the clouds allocate addresses; the catalogue (which the geo-router answers with
# and the relays dial) must then be updated to them. This reports every difference.
check "catalogue_addresses_match_deployment" {
  assert {
    condition = alltrue(concat(
      [for name, m in module.aws_region : m.relay_address == local.aws[name].relay.ip && toset(m.ingress_addresses) == toset(local.aws[name].ingress.addresses)],
      [for name, m in module.gcp_region : m.relay_address == local.gcp[name].relay.ip && toset(m.ingress_addresses) == toset(local.gcp[name].ingress.addresses)],
    ))
    error_message = "Deployed addresses differ from the catalogue; copy the `deployed_addresses` output into the region files (ingress.addresses, relay.address), re-export, and apply again."
  }
}
