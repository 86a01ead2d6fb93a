# The relay mesh's firewall: each region's relay port admits only the other regions' relay
# addresses (their catalogue relay endpoint and the egress addresses their relays dial from),
# and AWS relays may send QUIC only to the other regions' relay endpoints. It lives outside the
# region modules because it needs every region's addresses at once (a region module cannot read
# its siblings' outputs).

locals {
  # name => the addresses its relays use. Not de-duplicated: egress addresses are only known after
  # apply, and for_each keys below must be known at plan time, so they use list positions.
  sources = { for name, r in var.regions : name => concat([r.relay_ip], r.egress_ips) }

  aws_ingress = merge([
    for name, r in var.regions : {
      for peer in keys(var.regions) : "${name}<-${peer}" => { region = name, peer = peer } if peer != name
    } if r.cloud == "aws"
  ]...)

  # one rule per (region, peer, address): a security group rule holds one CIDR
  aws_ingress_rules = merge([
    for key, v in local.aws_ingress : {
      for i, ip in local.sources[v.peer] : "${key}#${i}" => merge(v, { ip = ip })
    }
  ]...)

  aws_egress_rules = {
    for key, v in local.aws_ingress : "${v.region}->${v.peer}" => v
  }
}

resource "aws_vpc_security_group_ingress_rule" "relay_from_peer" {
  for_each          = local.aws_ingress_rules
  region            = var.regions[each.value.region].cloud_region
  security_group_id = var.regions[each.value.region].aws_relay_lb_sg
  description       = "QUIC from the relay of region ${each.value.peer}"
  ip_protocol       = "udp"
  from_port         = var.regions[each.value.region].relay_port
  to_port           = var.regions[each.value.region].relay_port
  cidr_ipv4         = "${each.value.ip}/32"
}

resource "aws_vpc_security_group_egress_rule" "relay_to_peer" {
  for_each          = local.aws_egress_rules
  region            = var.regions[each.value.region].cloud_region
  security_group_id = var.regions[each.value.region].aws_relays_sg
  description       = "QUIC to the relay of region ${each.value.peer}"
  ip_protocol       = "udp"
  from_port         = var.regions[each.value.peer].relay_port
  to_port           = var.regions[each.value.peer].relay_port
  cidr_ipv4         = "${var.regions[each.value.peer].relay_ip}/32"
}

resource "google_compute_firewall" "relay_from_peers" {
  for_each    = { for name, r in var.regions : name => r if r.cloud == "gcp" }
  project     = each.value.gcp_project
  name        = "meridian-${each.key}-relay-peers"
  network     = each.value.gcp_network
  description = "QUIC on the relay port from the other regions' relays only"
  direction   = "INGRESS"

  source_ranges = sort(flatten([for peer, ips in local.sources : [for ip in ips : "${ip}/32"] if peer != each.key]))
  target_tags   = [each.value.gcp_relay_tag]

  allow {
    protocol = "udp"
    ports    = [tostring(each.value.relay_port)]
  }

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}
