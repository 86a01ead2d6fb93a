resource "aws_vpc" "this" {
  region               = local.aws
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(local.tags, { Name = local.name })
}

# The default security group of a VPC allows all traffic between its members; nothing uses it,
# so it is emptied.
resource "aws_default_security_group" "this" {
  region = local.aws
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${local.name}-default-unused" })
}

resource "aws_internet_gateway" "this" {
  region = local.aws
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = local.name })
}

resource "aws_subnet" "public" {
  for_each                = local.public_subnets
  region                  = local.aws
  vpc_id                  = aws_vpc.this.id
  availability_zone       = each.key
  cidr_block              = each.value
  map_public_ip_on_launch = false
  tags                    = merge(local.tags, { Name = "${local.name}-public-${each.key}", "meridian:tier" = "public" })
}

resource "aws_subnet" "private" {
  for_each          = local.private_subnets
  region            = local.aws
  vpc_id            = aws_vpc.this.id
  availability_zone = each.key
  cidr_block        = each.value
  tags              = merge(local.tags, { Name = "${local.name}-private-${each.key}", "meridian:tier" = "private" })
}

resource "aws_route_table" "public" {
  region = local.aws
  vpc_id = aws_vpc.this.id
  tags   = merge(local.tags, { Name = "${local.name}-public" })
}

resource "aws_route" "public_internet" {
  region                 = local.aws
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "public" {
  for_each       = aws_subnet.public
  region         = local.aws
  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

# One NAT gateway per zone. Their addresses are the region's *egress* addresses: a relay dialing
# a peer region arrives from one of them, so peers open their relay port to these too
# (relay-mesh-rules module).
resource "aws_eip" "nat" {
  for_each = local.public_subnets
  region   = local.aws
  domain   = "vpc"
  tags     = merge(local.tags, { Name = "${local.name}-egress-${each.key}", "meridian:role" = "relay-egress" })
}

resource "aws_nat_gateway" "this" {
  for_each      = aws_subnet.public
  region        = local.aws
  allocation_id = aws_eip.nat[each.key].id
  subnet_id     = each.value.id
  tags          = merge(local.tags, { Name = "${local.name}-${each.key}" })

  depends_on = [aws_internet_gateway.this]
}

resource "aws_route_table" "private" {
  for_each = aws_subnet.private
  region   = local.aws
  vpc_id   = aws_vpc.this.id
  tags     = merge(local.tags, { Name = "${local.name}-private-${each.key}" })
}

resource "aws_route" "private_egress" {
  for_each               = aws_route_table.private
  region                 = local.aws
  route_table_id         = each.value.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[each.key].id
}

resource "aws_route_table_association" "private" {
  for_each       = aws_subnet.private
  region         = local.aws
  subnet_id      = each.value.id
  route_table_id = aws_route_table.private[each.key].id
}

# VPC flow logs, encrypted with the region key and kept a year.
resource "aws_cloudwatch_log_group" "flow" {
  region            = local.aws
  name              = "/meridian/${var.region.name}/vpc-flow"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.region.arn
  tags              = local.tags
}

data "aws_iam_policy_document" "flow_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["vpc-flow-logs.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "flow_write" {
  statement {
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.flow.arn}:*"]
  }
}

resource "aws_iam_role" "flow" {
  name               = "${local.name}-flow-logs"
  assume_role_policy = data.aws_iam_policy_document.flow_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "flow" {
  name   = "write-flow-logs"
  role   = aws_iam_role.flow.id
  policy = data.aws_iam_policy_document.flow_write.json
}

resource "aws_flow_log" "this" {
  region          = local.aws
  vpc_id          = aws_vpc.this.id
  traffic_type    = "ALL"
  log_destination = aws_cloudwatch_log_group.flow.arn
  iam_role_arn    = aws_iam_role.flow.arn
  tags            = local.tags
}
