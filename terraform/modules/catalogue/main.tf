# The region catalogue as terraform values. Pure: no providers and no resources, so
# scripts/check-terraform-catalogue.py can evaluate it offline (terraform init needs no download
# for it) and check the same partition the root configuration deploys.

locals {
  document = jsondecode(var.catalogue_json)
  regions  = local.document.regions

  # Clouds terraform can deploy; `local` is the dev catalogue's "this machine".
  deployable_clouds = ["aws", "gcp"]

  by_cloud = {
    for cloud in local.deployable_clouds : cloud => {
      for name, region in local.regions : name => region if region.cloud == cloud
    }
  }

  undeployable = sort([
    for name, region in local.regions : name if !contains(local.deployable_clouds, region.cloud)
  ])

  # Every address a region's relay may use towards its peers: the catalogue endpoint. The
  # regions' NAT egress addresses are added by the root configuration from module outputs.
  relay_endpoints = { for name, region in local.regions : name => region.relay.ip }
}
