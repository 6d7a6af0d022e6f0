"""cml_workspace"""
