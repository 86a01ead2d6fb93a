# Launch templates and autoscaling groups for nodes and relays. The image carries the binaries
# and the units from deploy/systemd; user data only writes this region's settings
# (/etc/meridian/deploy.env and the binary's TOML) and starts the units. Secrets are fetched at
# boot by meridian-secrets.service into /run/meridian (tmpfs), never passed in user data.

locals {
  deploy_env = {
    MERIDIAN_CLOUD            = "aws"
    MERIDIAN_CLOUD_REGION     = local.aws
    MERIDIAN_REGION_NAME      = var.region.name
    MERIDIAN_REDIS_HOST       = aws_elasticache_replication_group.this.primary_endpoint_address
    MERIDIAN_REDIS_PORT       = "6379"
    MERIDIAN_REDIS_USER       = aws_elasticache_user.meridian.user_name
    MERIDIAN_REDIS_TLS        = "1"
    MERIDIAN_SECRET_TOKEN     = var.secrets.token_secret_arn
    MERIDIAN_SECRET_REDIS     = aws_secretsmanager_secret.redis_auth.arn
    MERIDIAN_SECRET_RELAY_TLS = aws_secretsmanager_secret.relay_tls.arn
    MERIDIAN_SECRET_MESH_CA   = var.secrets.mesh_ca_cert_arn
  }

  roles = {
    node = {
      instance_type = var.nodes.instance_type
      unit          = "meridian-region-node.service"
      port          = var.nodes.ops_port
    }
    relay = {
      instance_type = var.relays.instance_type
      unit          = "meridian-interregion-relay.service"
      port          = var.relays.health_port
    }
  }
}

resource "aws_launch_template" "role" {
  for_each      = local.roles
  region        = local.aws
  name          = "${local.name}-${each.key}"
  image_id      = data.aws_ami.meridian.id
  instance_type = each.value.instance_type
  # Written out (not from local.roles) so the graph links each group to its template.
  vpc_security_group_ids = [each.key == "node" ? aws_security_group.nodes.id : aws_security_group.relays.id]
  ebs_optimized          = true
  update_default_version = true
  tags                   = local.tags

  user_data = base64encode(templatefile("${path.module}/templates/user-data.sh.tftpl", {
    role            = each.key
    unit            = each.value.unit
    deploy_env      = local.deploy_env
    catalogue_files = var.catalogue_files
    region          = var.region
    node_port       = var.nodes.port
    ops_port        = var.nodes.ops_port
    relay_port      = var.region.relay.port
    health          = var.relays.health_port
    namespace       = var.metrics_namespace
    metrics         = each.value.port
    # A plain string, not a reference to the group (which depends on this template).
    asg_name = "${local.name}-${each.key}s"
  }))

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance[each.key].arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = 20
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = aws_kms_key.region.arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${local.name}-${each.key}", "meridian:role" = each.key })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${local.name}-${each.key}" })
  }
}

resource "aws_autoscaling_group" "nodes" {
  region              = local.aws
  name                = "${local.name}-nodes"
  min_size            = var.nodes.min_size
  max_size            = var.nodes.max_size
  vpc_zone_identifier = [for s in aws_subnet.private : s.id]
  target_group_arns   = [aws_lb_target_group.nodes.arn]
  # Instance health is not the target group's: that one follows /readyz, and an ASG with
  # "ELB" health replaces an instance whenever a target group calls it unhealthy, so a Redis
  # outage of ~20 s would replace every node of the region. EC2 status checks replace a broken
  # instance; systemd restarts a dead node process (Restart=on-failure); /healthz on the ops
  # port answers liveness for operators and monitoring.
  health_check_type         = "EC2"
  health_check_grace_period = 60
  default_instance_warmup   = 60
  # Connections re-home when a node goes: replace slowly so clients spread over the others.
  termination_policies = ["OldestLaunchTemplate", "OldestInstance"]

  launch_template {
    id      = aws_launch_template.role["node"].id
    version = aws_launch_template.role["node"].latest_version
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 90
      instance_warmup        = 60
    }
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${local.name}-node" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  lifecycle {
    # The scaling policies own the group's size between min and max.
    ignore_changes = [desired_capacity]
  }
}

resource "aws_autoscaling_group" "relays" {
  region              = local.aws
  name                = "${local.name}-relays"
  min_size            = var.relays.count
  max_size            = var.relays.count
  desired_capacity    = var.relays.count
  vpc_zone_identifier = [for s in aws_subnet.private : s.id]
  target_group_arns   = [aws_lb_target_group.relays.arn]
  # EC2 health, not ELB: a standby relay is unhealthy to the NLB by design.
  health_check_type         = "EC2"
  health_check_grace_period = 60

  launch_template {
    id      = aws_launch_template.role["relay"].id
    version = aws_launch_template.role["relay"].latest_version
  }

  dynamic "tag" {
    for_each = merge(local.tags, { Name = "${local.name}-relay" })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}

# Scaling: on CPU, and on open WebSockets per node (the node's meridian_node_connections gauge,
# published to CloudWatch by the agent with the group's name as dimension).
resource "aws_autoscaling_policy" "nodes_cpu" {
  region                 = local.aws
  name                   = "${local.name}-cpu"
  autoscaling_group_name = aws_autoscaling_group.nodes.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    target_value = var.nodes.cpu_target_percent
    predefined_metric_specification {
      predefined_metric_type = "ASGAverageCPUUtilization"
    }
  }
}

resource "aws_autoscaling_policy" "nodes_connections" {
  region                 = local.aws
  name                   = "${local.name}-connections"
  autoscaling_group_name = aws_autoscaling_group.nodes.name
  policy_type            = "TargetTrackingScaling"

  target_tracking_configuration {
    target_value = var.nodes.connections_per_node_target
    customized_metric_specification {
      namespace   = var.metrics_namespace
      metric_name = "meridian_node_connections"
      statistic   = "Average"
      metric_dimension {
        name  = "AutoScalingGroupName"
        value = aws_autoscaling_group.nodes.name
      }
    }
  }
}
