"""Attribution and fusion: from IPs, meters and money to ranked suspect premises."""
