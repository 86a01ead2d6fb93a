output "site" {
  description = "Name of the router site."
  value       = var.site.name
}

output "cloud" {
  description = "Always \"aws\"."
  value       = "aws"
}

output "address" {
  description = "Static public IPv4 address of the router (the parent zone's glue record)."
  value       = aws_eip.router.public_ip
}
