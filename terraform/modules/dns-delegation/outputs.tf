output "name_servers" {
  description = "Fully qualified names of the delegated name servers."
  value       = sort(values(local.ns_names))
}

output "glue" {
  description = "Glue records: name server name => IPv4 address."
  value       = { for label, ip in var.name_servers : local.ns_names[label] => ip }
}
