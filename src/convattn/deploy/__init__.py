"""convattn.deploy"""
