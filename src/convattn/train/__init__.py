"""convattn.train"""
