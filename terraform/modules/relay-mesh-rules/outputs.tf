output "peer_sources" {
  description = "For each region, the addresses its relay port admits (every other region's relay endpoint and egress addresses)."
  value = {
    for name in keys(var.regions) : name => sort(flatten([for peer, ips in local.sources : ips if peer != name]))
  }
}
