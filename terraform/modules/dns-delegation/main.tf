# Delegates the mesh zone to the geo-routers: an NS record set in the parent zone naming
# ns-<label>.<zone>, and glue A records for those names (they lie inside the delegated zone, so
# resolvers need the parent to hand out their addresses). Route 53 is global: no region.

locals {
  ns_names = { for label, ip in var.name_servers : label => "${label}.${var.zone_name}" }
}

resource "aws_route53_record" "delegation" {
  zone_id = var.parent_zone_id
  name    = var.zone_name
  type    = "NS"
  ttl     = var.ns_ttl
  records = [for label in sort(keys(local.ns_names)) : "${local.ns_names[label]}."]
}

resource "aws_route53_record" "glue" {
  #checkov:skip=CKV2_AWS_23: glue for a delegation points at the geo-routers' static addresses, passed in from the router modules (other providers' resources).
  for_each = var.name_servers
  zone_id  = var.parent_zone_id
  name     = local.ns_names[each.key]
  type     = "A"
  ttl      = var.ns_ttl
  records  = [each.value]
}
